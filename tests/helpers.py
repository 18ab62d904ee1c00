"""Small helpers shared by tests."""

import io
import tarfile
from pathlib import Path


def rewrite_tar(path: Path, replace: dict[str, bytes | None]) -> None:
    """Rewrite a tar in place, replacing members' bytes (None drops the member); others stay as they were."""
    src = tarfile.open(fileobj=io.BytesIO(Path(path).read_bytes()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()
            if info.name in replace:
                if replace[info.name] is None:
                    continue
                data = replace[info.name]
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    Path(path).write_bytes(buf.getvalue())
