"""Reading a batch file: CSV (UTF-8, with or without BOM, comma or semicolon) or XLSX.

Only those two, decided by the file's name and confirmed by its content (a client's
Content-Type is no help: browsers on Windows send .csv as application/vnd.ms-excel, curl as
application/octet-stream).

Rows are streamed from the uploaded file (spooled by the multipart parser), never held whole in
memory: `read_rows` yields one dict of cell texts per data row, with its line in the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import zipfile
from collections.abc import Iterator
from pathlib import PurePath
from typing import IO, Any

from openpyxl import load_workbook

from app.errors import BadRequest

MAX_BYTES = 10 * 1024 * 1024
MAX_ROWS = 100_000
# A cell longer than this is not a phone number or a variable anyone means.
MAX_CELL = 2000
_XLSX_MAGIC = b"PK\x03\x04"
# Enough of a CSV file's start to tell text from a binary file (no text has a NUL byte).
_SNIFF_BYTES = 8192


class FileRejected(BadRequest):
    code = "INVALID_BATCH_FILE"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # a number typed in a spreadsheet cell: 14155550123.0
    return str(value).strip()


def _header(cells: list[str]) -> list[str]:
    names = [c.strip().lstrip("\ufeff") for c in cells]
    lowered = [n.lower() for n in names]
    if "number" not in lowered and "hubspotcontactid" not in lowered:
        raise FileRejected(
            "The file needs a `number` (or `hubspotContactId`) column (the first row names the "
            "columns).",
            code="MISSING_NUMBER_COLUMN",
        )
    seen: set[str] = set()
    out = []
    for name, low in zip(names, lowered, strict=True):
        key = {
            "number": "number",
            "dynamicvariables": "dynamicVariables",
            "hubspotcontactid": "hubspotContactId",
        }.get(low, name)
        if key and key in seen:
            raise FileRejected(f"The column {key!r} appears twice.", code="DUPLICATE_COLUMN")
        seen.add(key)
        out.append(key)
    return out


def file_kind(head: bytes, filename: str) -> str:
    """ "csv" or "xlsx": what the file's name says it is, once its first bytes agree."""
    suffix = PurePath(filename.replace("\\", "/")).suffix.lower()
    if suffix not in (".csv", ".xlsx"):
        shown = PurePath(filename.replace("\\", "/")).name[:100] or "(no name)"
        raise FileRejected(
            f"Upload a .csv or .xlsx file; {shown!r} is neither (save a spreadsheet as .xlsx "
            "or as 'CSV UTF-8').",
            code="UNSUPPORTED_FILE_TYPE",
        )
    if not head:
        raise FileRejected("The file is empty.", code="EMPTY_BATCH_FILE")
    zipped = head.startswith(_XLSX_MAGIC)
    if suffix == ".xlsx" and not zipped:
        raise FileRejected("The file is named .xlsx but is not an Excel workbook.")
    if suffix == ".csv" and (zipped or b"\x00" in head):
        raise FileRejected(
            "The file is named .csv but is not CSV text (an Excel workbook or a UTF-16 "
            "export?); save it as 'CSV UTF-8' or upload it as .xlsx."
        )
    return suffix[1:]


def read_rows(file: IO[bytes], filename: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, {column: text}) for each non-empty data row; a file of another kind or with a
    bad header is a 400."""
    head = file.read(_SNIFF_BYTES)
    file.seek(0)
    if file_kind(head, filename) == "xlsx":
        yield from _xlsx_rows(file)
    else:
        yield from _csv_rows(file)


def _csv_rows(file: IO[bytes]) -> Iterator[tuple[int, dict[str, str]]]:
    text = io.TextIOWrapper(file, encoding="utf-8-sig", newline="", errors="strict")
    try:
        first = text.readline()
        if not first.strip():
            raise FileRejected("The file is empty.", code="EMPTY_BATCH_FILE")
        # The header decides the delimiter: Excel in many locales writes semicolons.
        delimiter = ";" if first.count(";") > first.count(",") else ","
        header = _header(next(csv.reader([first], delimiter=delimiter)))
        reader = csv.reader(text, delimiter=delimiter)
        for index, cells in enumerate(reader):
            if not any(c.strip() for c in cells):
                continue
            yield (
                index + 2,
                {
                    name: cells[i].strip()[:MAX_CELL] if i < len(cells) else ""
                    for i, name in enumerate(header)
                    if name
                },
            )
    except UnicodeDecodeError as exc:
        raise FileRejected(
            "The CSV file is not UTF-8 text; save it as 'CSV UTF-8'.", code="INVALID_ENCODING"
        ) from exc
    except csv.Error as exc:
        raise FileRejected(f"The CSV file cannot be read: {exc}.") from exc
    finally:
        # Hand the file back unclosed (its owner closes it); it may be closed already when a
        # reader that gave up is collected late.
        with contextlib.suppress(ValueError):
            text.detach()


def _xlsx_rows(file: IO[bytes]) -> Iterator[tuple[int, dict[str, str]]]:
    # openpyxl parses the sheet XML with defusedxml when it is installed (it is): no entity
    # expansion bombs. read_only streams the sheet row by row.
    try:
        book = load_workbook(file, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise FileRejected("The file is not a readable .xlsx workbook.") from exc
    try:
        sheet = book.worksheets[0] if book.worksheets else None
        if sheet is None:
            raise FileRejected("The workbook has no sheet.", code="EMPTY_BATCH_FILE")
        rows = sheet.iter_rows(values_only=True)
        first = next(rows, None)
        if first is None:
            raise FileRejected("The file is empty.", code="EMPTY_BATCH_FILE")
        header = _header([_cell(v) for v in first])
        for index, values in enumerate(rows):
            cells = [_cell(v)[:MAX_CELL] for v in values]
            if not any(cells):
                continue
            yield (
                index + 2,
                {name: cells[i] if i < len(cells) else "" for i, name in enumerate(header) if name},
            )
    finally:
        book.close()
