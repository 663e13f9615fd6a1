# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test venv system-deps loadtest-deps bench-sign bench-crypto clean

$(BIN)/mta: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/mta

## Install and run the MTA on the embedded defaults (PostgreSQL under ./var).
run: venv
	$(BIN)/mta serve

## Install everything the tests need and run them.
test: venv system-deps
	$(BIN)/python -m pytest -q -n 2

## Debian packages the tests use as real peers: swaks (with the Perl TLS modules it only recommends), OpenDKIM, HAProxy, SpamAssassin, Dovecot LMTP, and promtool (from prometheus) to check the alert rules.
system-deps:
	scripts/install-system-deps.sh swaks libnet-ssleay-perl libio-socket-ssl-perl opendkim opendkim-tools haproxy spamd spamassassin dovecot-lmtpd prometheus

## Postfix for its load tools and as the comparison peer.
loadtest-deps: venv
	scripts/install-system-deps.sh postfix opendkim

bench-sign: venv
	$(BIN)/python -m loadtest.sign_bench

bench-crypto: venv
	$(BIN)/python -m loadtest.crypto_bench

clean:
	rm -rf $(VENV) var
