.PHONY: run demo serve test lint bench bench-ingest bench-ceiling bench-download bench-audit peers

run: demo  ## set up the venv and run the demo (embedded default)

demo:
	infra/venv.sh
	.venv/bin/zorgbericht demo

serve:
	infra/venv.sh
	.venv/bin/zorgbericht serve

test:  ## install what the tests need, start the peers, run the whole suite
	infra/test.sh

lint:
	.venv/bin/ruff check zorgbericht dicom_ingest tests infra bench
	.venv/bin/ruff format --check zorgbericht dicom_ingest tests infra bench

bench: bench-ingest bench-ceiling bench-download bench-audit

bench-ingest:
	infra/install-debian.sh
	infra/venv.sh test
	.venv/bin/python bench/ingest.py

bench-ceiling:  ## what bare pynetdicom receives, next to storescp (the ingest ratio's ceiling)
	.venv/bin/python bench/pynetdicom_ceiling.py

peers:  ## start PostgreSQL, SeaweedFS and Orthanc by hand, for trying things
	.venv/bin/python infra/peers.py

bench-download:  ## the DICOM ZIP of a ~1 GB study through uvicorn vs reading the store directly
	.venv/bin/python bench/download.py

bench-audit:  ## the hash chain's cost on PostgreSQL: writes vs plain INSERT, verify/export vs COPY
	.venv/bin/python bench/audit.py
