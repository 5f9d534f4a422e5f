"""The index on disk: names and homes (``names``), how it is replaced whole (``layout``), its manifests
(``manifest``), formats and their history (``formats``), texts (``blobs``) and token stores
(``tokens``, ``residual``)."""

from .blobs import ArrayWriter, Blob, BlobWriter, RowReader
from .layout import StagingDir, locate
from .names import available, default_home, target_path
from .manifest import MANIFEST, read_manifest, sha256_file, verify, write_manifest

__all__ = ["ArrayWriter", "Blob", "BlobWriter", "RowReader", "StagingDir", "available", "default_home", "locate", "target_path", "MANIFEST", "read_manifest", "sha256_file", "verify", "write_manifest"]
