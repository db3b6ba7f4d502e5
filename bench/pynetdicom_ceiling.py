"""What pynetdicom itself can receive over one association, next to dcmtk storescp.

    python bench/pynetdicom_ceiling.py [--instances 300]

A bare pynetdicom Storage SCP that only writes each encoded data set to disk (no parsing, no
database, no upload) is the ceiling for any receiver built on pynetdicom; the ingest benchmark's
ratio against storescp cannot exceed this one. Uses the study ``bench/ingest.py`` writes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import storescu, study_folder  # noqa: E402
from infra.peers import StoreSCP, free_port  # noqa: E402


def bare_receiver(out: Path, switch_interval: float | None) -> float:
    """Start a bare SCP, send the study, return the seconds storescu took."""
    if switch_interval:
        sys.setswitchinterval(switch_interval)
    count = [0]

    def on_store(event) -> int:  # type: ignore[no-untyped-def]
        (out / f"{count[0]}.dcm").write_bytes(event.encoded_dataset(include_meta=True))
        count[0] += 1
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 4 * 1024 * 1024
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(
            context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
        )
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        return storescu(port, "BARE", STUDY)
    finally:
        server.shutdown()
        sys.setswitchinterval(0.005)


def main() -> None:
    global STUDY
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=300)
    args = parser.parse_args()
    full = study_folder(2, 300, 512)
    with tempfile.TemporaryDirectory() as work:
        STUDY = Path(work) / "study"
        STUDY.mkdir()
        for file in sorted(full.glob("*.dcm"))[: args.instances]:
            os.link(file, STUDY / file.name)
        count = len(list(STUDY.glob("*.dcm")))
        with StoreSCP() as scp:
            dcmtk = storescu(scp.port, scp.ae_title, STUDY)
        results = {}
        for label, interval in (
            ("pynetdicom, default GIL switch", None),
            ("pynetdicom, 0.5 ms GIL switch", 0.0005),
        ):
            out = Path(work) / label.replace(" ", "_").replace(",", "")
            out.mkdir()
            results[label] = bare_receiver(out, interval)
    print(f"{count} instances over one association each")
    print(f"  {'dcmtk storescp -> disk':32s} {count / dcmtk:8.1f} inst/s")
    for label, seconds in results.items():
        print(
            f"  {label:32s} {count / seconds:8.1f} inst/s   ratio vs storescp "
            f"{dcmtk / seconds:.2f}x"
        )


STUDY = Path()

if __name__ == "__main__":
    main()
