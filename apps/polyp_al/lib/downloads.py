"""MONAI Label's frame and label downloads, made safe against the files changing under them.

``guard_downloads`` (called by ``security.harden``) replaces what MONAI Label's datastore endpoints use:
its FileResponse by one that opens the file when the answer is made (a delete or replace a moment later no
longer cuts a body short), and its checksum check by one that works. How many downloads run at once
(``POLYPAL_DOWNLOAD_THREADS``) is the Gate's rule (``security.py``); a client that stops reading is cut off
by ``connections.py``.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

import anyio


def held_file_response():
    """MONAI Label's frame and label downloads, with the file opened when the answer is made: a file deleted
    or replaced (moved to the trash) a moment later is still sent whole from the open handle, and one already
    gone is a 404, not a 500 or a body cut short after its headers."""
    from fastapi import HTTPException
    from starlette.responses import FileResponse

    class HeldFileResponse(FileResponse):
        def __init__(self, path, *args, **kwargs):
            try:
                self._fh = open(path, "rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise HTTPException(status_code=404, detail="not found (deleted or replaced just now)") from None
            kwargs["stat_result"] = os.fstat(self._fh.fileno())
            super().__init__(path, *args, **kwargs)

        @asynccontextmanager
        async def _open_file(self):
            """Starlette's reads (whole file, one range or several) go to the handle opened above, not to the
            path again: Range requests are honoured as Starlette does (a resumed model download), from the file
            as it was when the answer was made."""
            yield anyio.wrap_file(self._fh)

        async def __call__(self, scope, receive, send):
            ext = scope.get("extensions") or {}
            if "http.response.pathsend" in ext:  # (a server that sends a path itself would open it again)
                scope = {**scope, "extensions": {k: v for k, v in ext.items() if k != "http.response.pathsend"}}
            if str(scope.get("path", "")).rstrip("/").endswith("/datastore/dataset"):
                # the export is a new zip at every request: a resumed download would splice two of them
                scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"range"]}
                del self.headers["accept-ranges"]
            try:
                await super().__call__(scope, receive, send)
            finally:
                self._fh.close()

    return HeldFileResponse


def guard_downloads() -> None:
    """Frame, label and model downloads through HeldFileResponse (a model deleted or replaced during its
    download cut the body short after its headers, or was a 500); the checksum HEAD fixed."""
    import monailabel.endpoints.datastore as ds
    import monailabel.endpoints.model as md

    ds.FileResponse = md.FileResponse = held_file_response()
    ds.download_image = checked_download_image(ds.download_image)


def checked_download_image(download_image):
    """HEAD /datastore/image?check_sum=...: MONAI Label 0.8.5 compares ``ALGO:hex`` with a digest whose
    leading characters it strips (``lstrip``), so no sum ever matched. Here a sum (checked by the Gate:
    ``[ALGO:]hex``, SHA256 by default) is compared with the frame's; 404 when it differs, as MONAI Label meant."""
    from fastapi import HTTPException
    from monailabel.interfaces.utils.app import app_instance
    from monailabel.utils.others.generic import file_checksum

    def checked(image: str, check_only=False, check_sum=None):
        if not (check_only and check_sum):
            return download_image(image, check_only=check_only, check_sum=check_sum)
        path = app_instance().datastore().get_image_uri(image)
        if not path or not os.path.isfile(path):
            raise HTTPException(status_code=404, detail="Image NOT Found")
        algo, _, digest = check_sum.rpartition(":")
        algo = algo.upper() or "SHA256"
        if file_checksum(path, algo=algo) != f"{algo}:{digest.lower()}":
            raise HTTPException(status_code=404, detail="Image NOT Found (checksum failed)")
        return {}

    return checked
