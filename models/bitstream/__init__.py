"""The ``.sem`` file: one image's label map, caption and seed in a compact, exact, versioned format.

The format is specified in ``docs/bitstream.md``; this package is its reference implementation,
one module per part, each importing only modules listed before it:

- ``errors``: ``BitstreamError``, raised by every decoder of the package;
- ``range_coder``: the binary range coder, integer arithmetic;
- ``label_map_coder``: the context-mixing model of the label map (numba);
- ``grid``: compact mode, the reduced grid and its upsampling rule;
- ``caption_coder``: the static word model of captions;
- ``sem_file``: the file itself (header, checks, ``encode_code`` / ``decode_code``, files on disk);
- ``rate_control``: the finest file of a code within a byte budget (``encode_within``);
- ``__main__``: the command line, ``python -m models.bitstream encode|decode|info``.
"""

from models.bitstream.caption_coder import decode_caption, encode_caption
from models.bitstream.errors import BitstreamError
from models.bitstream.rate_control import OVER_BUDGET_STATUS, Fitted, RateSearch, encode_within, write_sem_within
from models.bitstream.sem_file import (SemInfo, decode_code, encode_code, inspect_code, read_code_file, read_sem,
                                       read_sem_bytes, write_sem)

__all__ = ["BitstreamError", "Fitted", "OVER_BUDGET_STATUS", "RateSearch", "SemInfo", "decode_caption", "decode_code",
           "encode_caption", "encode_code", "encode_within", "inspect_code", "read_code_file", "read_sem",
           "read_sem_bytes", "write_sem", "write_sem_within"]
