"""Wire the DICOM node: our AE, its presentation contexts, and the server thread."""

from __future__ import annotations

import logging
import sys

from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.uid import (
    AllTransferSyntaxes as KNOWN_SYNTAXES,
)
from pynetdicom import AE, AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_ingest.handlers import bindings
from dicom_ingest.pipeline import Pipeline
from dicom_ingest.stager import StagerProcess
from zorgbericht.settings import Settings

log = logging.getLogger(__name__)

UNCOMPRESSED = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]


def decodable_transfer_syntaxes() -> list[UID]:
    """Every transfer syntax whose pixel data our installed decoders can read."""
    accepted = list(UNCOMPRESSED)
    for uid in KNOWN_SYNTAXES:
        if uid in accepted:
            continue
        try:
            if get_decoder(uid).is_available:
                accepted.append(uid)
        except NotImplementedError:
            continue
    return accepted


def make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.maximum_pdu_size = settings.dicom_max_pdu
    ae.maximum_associations = 32
    ae.network_timeout = 60
    ae.dimse_timeout = 60
    syntaxes = decodable_transfer_syntaxes()
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    ae.add_supported_context(Verification)
    return ae


def start_dicom_server(
    *,
    settings: Settings,
    sessions: sessionmaker[Session],
    pipeline: Pipeline | StagerProcess,
    host: str | None = None,
    port: int | None = None,
) -> ThreadedAssociationServer:
    """Start listening in a background thread; stop with ``server.shutdown()``."""
    # The association thread answers C-STOREs while upload and index threads run: a short
    # GIL switch interval keeps it from waiting the default 5 ms behind them each time.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
    ae = make_ae(settings)
    address = (host or settings.dicom_host, port if port is not None else settings.dicom_port)
    server = ae.start_server(address, block=False, evt_handlers=bindings(sessions, pipeline))
    log.info("DICOM node %s listening on %s:%d", settings.dicom_ae_title, *server.server_address)
    return server
