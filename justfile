# The same recipes as the Makefile, for `just`.

config := env_var_or_default("CONFIG", "pipeline.toml")
args := env_var_or_default("ARGS", "")
bin := "target/release"

run: data train explain summarize analyze

build:
    cargo build --release --workspace --bins

data:
    scripts/fetch-data.sh fashion-mnist

data-cifar10:
    scripts/fetch-data.sh cifar10

data-cifar100:
    scripts/fetch-data.sh cifar100

data-mnist:
    scripts/fetch-data.sh mnist

data-kmnist:
    scripts/fetch-data.sh kmnist

train: build
    {{bin}}/trainer --config {{config}} {{args}}

explain: build
    {{bin}}/explainer --config {{config}} {{args}}

summarize: build
    {{bin}}/summarizer --config {{config}} {{args}}

analyze: build
    {{bin}}/analyzer --config {{config}} {{args}}

status: build
    for stage in trainer explainer summarizer analyzer; do {{bin}}/$stage --config {{config}} {{args}} --dry-run || exit 1; done

test: build
    cargo test --release --workspace

bench:
    cargo bench -p trainer --bench train_step
    cargo bench -p explainer --bench explain

bench-peer:
    scripts/compare-peer.sh

smoke:
    CONFIG=configs/smoke.toml just train explain summarize analyze

clean-runs:
    rm -rf runs
