# Viridian — the two README commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard proto/viridian/v1/*.proto)

.PHONY: all venv demo test lint proto proto-check syscall-docs syscall-docs-check api-docs api-docs-check unit integration bench clean

all: test

$(STAMP): pyproject.toml tools/build_unicorn.py node_agent/runtime/_syscall_hook.c tools/build_syscall_hook.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) tools/build_unicorn.py
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) tools/build_syscall_hook.py
	touch $(STAMP)

venv: $(STAMP)

## Regenerate the committed protobuf/gRPC code from proto/.
proto: $(STAMP)
	$(PY) tools/gen_proto.py

## Fail if the committed generated code differs from what proto/ produces.
proto-check: $(STAMP)
	$(PY) tools/gen_proto.py --check

## Regenerate docs/syscalls.md from the syscall tables.
syscall-docs: $(STAMP)
	$(PY) tools/gen_syscall_docs.py

## Fail if docs/syscalls.md differs from what the tables produce.
syscall-docs-check: $(STAMP)
	$(PY) tools/gen_syscall_docs.py --check

## Regenerate docs/api.md from the protos and their comments.
api-docs: $(STAMP)
	$(PY) tools/gen_api_docs.py

## Fail if docs/api.md differs from what the protos produce.
api-docs-check: $(STAMP)
	$(PY) tools/gen_api_docs.py --check

lint: $(STAMP)
	$(VENV)/bin/ruff check controller node_agent tests bench tools deploy
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

integration: $(STAMP)
	$(VENV)/bin/pytest -q tests/integration

test: $(STAMP) proto-check syscall-docs-check api-docs-check lint
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

demo: $(STAMP)
	$(PY) -m controller.demo

bench: $(STAMP)
	$(PY) bench/runtime.py
	$(PY) bench/lifecycle.py
	$(PY) bench/placement.py

clean:
	rm -rf $(VENV) build .cache *.egg-info
