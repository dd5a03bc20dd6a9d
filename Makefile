# The two commands of the README:
#   make run    set up, build the demo model repository, start the service
#   make test   set up, then lint, type-check and run the whole suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PEERS := .venv-peers
PEERS_INSTALLED := $(PEERS)/.installed
REPOSITORY := var/model-repository
SAMPLES := var/samples
DEMO := $(REPOSITORY)/.built
HOST ?= 127.0.0.1
PORT ?= 50051
METRICS_PORT ?= 9095

.PHONY: run test lint typecheck unit protos bench demo clean redis-server browser postgresql java peers \
	podman image image-demo image-redis-standin image-test

# The container image (Dockerfile). Here no registry can be reached: the base is Debian 12 made
# by debootstrap (tests/image/make-base.sh, kept once made), and pip in the build gets this
# machine's CA bundle, pip configuration and wheel folder (torch's CPU wheel), mounted
# read-only. Elsewhere: `docker build -t sidelight:0.1.0 .` with the public defaults.
IMAGE ?= sidelight:0.1.0
BASE_IMAGE ?= localhost/sidelight-base:bookworm
WHEELS ?= /opt/wheels
PIP_MOUNTS := $(foreach f,/etc/ssl/certs/ca-certificates.crt /etc/pip.conf /etc/xdg/pip $(WHEELS),\
	$(if $(wildcard $(f)),-v $(f):$(f):ro))
IMAGE_BUILD_ARGS ?= --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg TORCH_INDEX= \
	$(if $(wildcard $(WHEELS)),--build-arg PIP_FIND_LINKS=$(WHEELS))
# podman 4.3 on this kernel: runc (crun fails), cgroupfs, no rlimits, the host network.
PODMAN := CONTAINERS_CONF=$(CURDIR)/tests/image/containers.conf podman --cgroup-manager cgroupfs
PODMAN_BUILD := $(PODMAN) build --runtime runc --network host $(PIP_MOUNTS) $(IMAGE_BUILD_ARGS)

$(INSTALLED): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,test]'
	touch $@

# The peers the integration tests run beside Sidelight that cannot share its venv (protobuf < 7):
# MLServer with its scikit-learn runtime, and Triton's gRPC client.
$(PEERS_INSTALLED): constraints-peers.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet -c constraints-peers.txt \
		mlserver mlserver-sklearn 'tritonclient[grpc]' uvloop scikit-learn
	touch $@

peers: $(PEERS_INSTALLED)

$(DEMO): $(INSTALLED) $(wildcard service/sidelight/demo/*.py)
	$(BIN)/sidelight models build-demo --out $(REPOSITORY) --samples $(SAMPLES)
	touch $@

demo: $(DEMO)

run: $(DEMO)
	$(BIN)/sidelight serve --model-repository $(REPOSITORY) --host $(HOST) --port $(PORT) \
		--metrics-port $(METRICS_PORT)

test: $(DEMO) $(PEERS_INSTALLED) redis-server postgresql browser java lint typecheck unit

# The job tests start private redis-server processes; install Debian's package if missing.
redis-server:
	@command -v redis-server >/dev/null || { \
		echo "redis-server missing: installing Debian's package"; \
		SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

# The audit tests start private PostgreSQL servers (initdb, pg_ctl): Debian's package if missing.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "PostgreSQL missing: installing Debian's package"; \
		SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql; }

# TorchServe's frontend is Java: Debian's JRE 17 if missing.
java:
	@command -v java >/dev/null || { \
		echo "java missing: installing Debian's openjdk-17-jre-headless"; \
		SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq openjdk-17-jre-headless; }

# The audit report's test opens the report in a headless browser: Debian's chromium and its
# driver, installed if missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		echo "chromium missing: installing Debian's packages"; \
		SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver; }

lint: $(INSTALLED)
	$(BIN)/ruff check service handlers tests bench protos
	$(BIN)/ruff format --check service handlers tests bench protos
	$(BIN)/hadolint Dockerfile

typecheck: $(INSTALLED)
	$(BIN)/mypy

unit: $(INSTALLED)
	$(BIN)/pytest

protos: $(INSTALLED)
	$(BIN)/python protos/generate.py

bench: $(DEMO) $(PEERS_INSTALLED)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	$(BIN)/python bench/sync_throughput.py --repository $(REPOSITORY)
	$(BIN)/python bench/job_throughput.py --repository $(REPOSITORY)
	$(BIN)/python bench/sampling_overhead.py --repository $(REPOSITORY)
	$(BIN)/python bench/audit_overhead.py --repository $(REPOSITORY)
	$(BIN)/python bench/remote_throughput.py --model mlp --hidden 256,256 --instances 128
	$(BIN)/python bench/remote_throughput.py --model mlp --hidden 64,64 --instances 128

# Debian's podman, runc and debootstrap, installed if missing.
podman:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
		echo "podman missing: installing Debian's podman, runc and debootstrap"; \
		SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq podman runc debootstrap; }

image: podman
	tests/image/make-base.sh $(BASE_IMAGE)
	$(PODMAN_BUILD) --target runtime -t $(IMAGE) .

# The image with the demo models in /models, to try it out.
image-demo: podman
	tests/image/make-base.sh $(BASE_IMAGE)
	$(PODMAN_BUILD) --target demo -t $(IMAGE)-demo .

# A stand-in for the public redis:7 image, which the dev overlay names: Debian's redis-server
# on the same local base (no registry here). tests/image/test_kube_play.py plays the overlay.
REDIS_STANDIN ?= localhost/sidelight-redis-standin:7
image-redis-standin: podman
	tests/image/make-base.sh $(BASE_IMAGE)
	$(PODMAN) image exists $(REDIS_STANDIN) || $(PODMAN) build --runtime runc --network host \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) -f tests/image/redis.Containerfile \
		-t $(REDIS_STANDIN) tests/image

# After `make test` in CI: the image built and run for real (tests/image): one container, then
# the dev overlay's API, worker and Redis with `podman kube play`.
image-test: image image-redis-standin $(DEMO)
	SIDELIGHT_IMAGE=$(IMAGE) SIDELIGHT_REDIS_STANDIN=$(REDIS_STANDIN) $(BIN)/pytest -m image tests/image

clean:
	rm -rf $(VENV) $(PEERS) var .mypy_cache .ruff_cache .pytest_cache
