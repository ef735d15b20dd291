# The pipeline as make targets. `make run` does everything for CONFIG;
# each stage target runs one stage over all its units (pass ARGS="--shard 0/4"
# or ARGS="--run good-fit --method lrp" to narrow it).

CONFIG ?= pipeline.toml
ARGS ?=
CARGO ?= cargo
BIN := target/release
STAGE = --config $(CONFIG) $(ARGS)

.PHONY: run build data data-cifar10 data-cifar100 data-mnist data-kmnist train explain summarize analyze status test bench bench-peer smoke clean-runs

run: data train explain summarize analyze

build:
	$(CARGO) build --release --workspace --bins

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
	$(BIN)/trainer $(STAGE)

explain: build
	$(BIN)/explainer $(STAGE)

summarize: build
	$(BIN)/summarizer $(STAGE)

analyze: build
	$(BIN)/analyzer $(STAGE)

# What each stage would do, and why (nothing is written).
status: build
	@for stage in trainer explainer summarizer analyzer; do $(BIN)/$$stage $(STAGE) --dry-run || exit 1; done

# The tests drive the stage binaries, so build them first.
test: build
	$(CARGO) test --release --workspace

bench:
	$(CARGO) bench -p trainer --bench train_step
	$(CARGO) bench -p explainer --bench explain
	$(CARGO) bench -p engine --bench layers

bench-peer:
	scripts/compare-peer.sh

smoke: CONFIG = configs/smoke.toml
smoke: train explain summarize analyze

clean-runs:
	rm -rf runs
