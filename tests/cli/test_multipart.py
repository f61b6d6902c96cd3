"""The upload body is streamed in bounded chunks and is a multipart body Django parses."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import cast

from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.http.multipartparser import MultiPartParser

from nerveshub.cli import CHUNK, Multipart


def test_it_streams_the_file_in_bounded_chunks_that_parse_back(tmp_path: Path) -> None:
    # given
    path = tmp_path / 'odd "name".fw'
    data = os.urandom(3 * CHUNK + 123)
    path.write_bytes(data)
    body = Multipart("firmware", path)
    # when
    chunks = list(body.chunks())
    raw = b"".join(chunks)
    meta = {"CONTENT_TYPE": body.content_type, "CONTENT_LENGTH": str(body.length)}
    _, files = MultiPartParser(meta, io.BytesIO(raw), [TemporaryFileUploadHandler()], "utf-8").parse()
    # then
    assert len(raw) == body.length
    assert max(len(c) for c in chunks) <= CHUNK
    uploaded = cast("UploadedFile[bytes]", files["firmware"])  # the stubs allow a list here too
    assert uploaded.read() == data
    assert uploaded.name == "odd _name_.fw"
