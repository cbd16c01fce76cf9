"""multipart/form-data bodies, read from bytes already in memory.

An upload is read whole before it is handled (a peer request's signature covers the body, and the
router forwards the same bytes), so the form is parsed from those bytes here rather than streamed.
Bounded: at most MAX_FORM_PARTS parts, text fields of at most MAX_FORM_FIELD_BYTES, UTF-8; every
malformation is a 400 in OpenAI's shape, never a 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import Message

from aiohttp.multipart import BadContentDispositionHeader, content_disposition_filename, parse_content_disposition

from ..serving.limits import MAX_FORM_FIELD_BYTES, MAX_FORM_PARTS
from .errors import APIError

MAX_PART_HEADERS = 8 * 1024


@dataclass(frozen=True)
class FormFile:
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Form:
    fields: dict[str, str | list[str]] = field(default_factory=dict)
    """Text fields; a name ending in `[]` (an array, as OpenAI's clients send one) collects a list."""
    files: dict[str, FormFile] = field(default_factory=dict)


def _bad(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, code="invalid_form", param=param)


def parse_form(content_type: str | None, body: bytes) -> Form:
    """The fields and files of a multipart/form-data body."""
    header = Message()
    header["Content-Type"] = content_type or ""
    boundary = header.get_param("boundary")
    if header.get_content_type() != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        raise _bad("This endpoint takes a multipart/form-data body (an uploaded file and form fields)")
    delimiter = b"--" + boundary.encode("latin-1")
    form = Form()
    start = body.find(delimiter)
    if start < 0:
        raise _bad("The multipart body has no part")
    position = start + len(delimiter)
    for _ in range(MAX_FORM_PARTS + 1):
        if body.startswith(b"--", position):
            return form
        if not body.startswith(b"\r\n", position):
            raise _bad("The multipart body is malformed (a boundary is not followed by a line break)")
        end = body.find(b"\r\n" + delimiter, position)
        if end < 0:
            raise _bad("The multipart body is cut off (no closing boundary)")
        _add_part(form, body[position + 2:end])
        position = end + 2 + len(delimiter)
    raise _bad(f"The form has more than {MAX_FORM_PARTS} parts")


def _add_part(form: Form, part: bytes) -> None:
    split = part.find(b"\r\n\r\n")
    if split < 0 or split > MAX_PART_HEADERS:
        raise _bad("A part of the multipart body has no complete headers")
    headers: dict[str, str] = {}
    for line in part[:split].decode("latin-1").split("\r\n"):
        key, colon, value = line.partition(":")
        if colon:
            headers[key.strip().lower()] = value.strip()
    data = part[split + 4:]
    kind: str | None
    try:
        kind, params = parse_content_disposition(headers.get("content-disposition"))
    except BadContentDispositionHeader:
        kind, params = None, {}
    name = params.get("name")
    if kind != "form-data" or not name:
        raise _bad("A part of the multipart body has no Content-Disposition: form-data with a name")
    filename = content_disposition_filename(params, "filename")
    if filename is not None:
        if name in form.files:
            raise _bad(f"The form has more than one file named {name!r}", name)
        form.files[name] = FormFile(filename, headers.get("content-type"), data)
        return
    if len(data) > MAX_FORM_FIELD_BYTES:
        raise _bad(f"The form field {name!r} is longer than {MAX_FORM_FIELD_BYTES} bytes", name)
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"The form field {name!r} is not UTF-8 text", name) from None
    if name.endswith("[]"):
        values = form.fields.setdefault(name, [])
        if not isinstance(values, list):
            raise _bad(f"The form field {name!r} is given twice", name)
        values.append(value)
    elif name in form.fields:
        raise _bad(f"The form field {name!r} is given twice", name)
    else:
        form.fields[name] = value
