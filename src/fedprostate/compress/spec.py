"""`CodecSpec`: what a site's codec string (e.g. "topk:0.05+int4:block=64:stochastic") means.

Grammar: ``[topk:FRACTION+]VALUES[:OPTION]...`` where VALUES is fp32, fp16, bf16, int8, int4 or
int2 and the options (integer codecs only, any order) are ``block=N`` (per-block scales over N
consecutive values, the default, N=64 by default), ``per=row`` / ``per=tensor`` / ``per=block``,
``stochastic`` (unbiased stochastic rounding) or ``nearest`` (round to nearest, the default).
``topk:F`` alone keeps the kept values in fp32.

`str(spec)` is the canonical form and parses back to an equal spec; it always names the scale
granularity of integer codecs, so "int8" prints as "int8:block=64".
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_VALUES = ("fp32", "fp16", "bf16")
INT_VALUES = {"int8": 8, "int4": 4, "int2": 2}
VALUE_FORMATS = FLOAT_VALUES + tuple(INT_VALUES)
DEFAULT_BLOCK = 64


@dataclass(frozen=True)
class CodecSpec:
    """A codec: value format, integer scale granularity, rounding and optional top-k."""

    values: str = "fp32"
    per: str | None = None  # "block" | "row" | "tensor"; integer codecs only
    block: int | None = None  # values per scale when per == "block"
    stochastic: bool = False  # integer codecs only
    topk: float | None = None  # fraction of entries kept, 0 < topk ≤ 1

    def __post_init__(self) -> None:
        if self.values not in VALUE_FORMATS:
            raise ValueError(
                f"unknown value format {self.values!r}; expected one of {', '.join(VALUE_FORMATS)}"
            )
        if self.topk is not None:
            if isinstance(self.topk, bool) or not isinstance(self.topk, int | float):
                raise ValueError(f"topk must be a fraction in (0, 1], got {self.topk!r}")
            if not 0.0 < float(self.topk) <= 1.0:
                raise ValueError(f"topk must be a fraction in (0, 1], got {self.topk!r}")
            object.__setattr__(self, "topk", float(self.topk))
        if self.values in FLOAT_VALUES:
            if self.per is not None or self.block is not None or self.stochastic:
                raise ValueError(
                    f"{self.values} takes no block/per/stochastic options "
                    "(those are for int8, int4 and int2)"
                )
            return
        # Integer codecs: fill the defaults so that equal codecs compare equal.
        per = "block" if self.per is None else self.per
        if per not in ("block", "row", "tensor"):
            raise ValueError(f"per must be 'block', 'row' or 'tensor', got {per!r}")
        object.__setattr__(self, "per", per)
        if per == "block":
            block = DEFAULT_BLOCK if self.block is None else self.block
            if isinstance(block, bool) or not isinstance(block, int) or block < 1:
                raise ValueError(f"block must be a positive integer, got {block!r}")
            object.__setattr__(self, "block", block)
        elif self.block is not None:
            raise ValueError(f"block={self.block} only applies to per=block, not per={per}")
        if per == "row" and self.topk is not None:
            raise ValueError(
                "per=row has no meaning for top-k values (a flat vector); use block=N or per=tensor"
            )
        if not isinstance(self.stochastic, bool):
            raise ValueError(f"stochastic must be True or False, got {self.stochastic!r}")

    @property
    def bits(self) -> int:
        """Bits per transmitted value (before scales and top-k indices)."""
        return INT_VALUES.get(self.values) or int(self.values[2:])

    @property
    def is_integer(self) -> bool:
        return self.values in INT_VALUES

    @property
    def lossy(self) -> bool:
        """Anything but plain fp32. Lossy codecs are applied to deltas (see `delta.py`)."""
        return self.values != "fp32" or self.topk is not None

    @classmethod
    def parse(cls, text: str | CodecSpec) -> CodecSpec:
        if isinstance(text, CodecSpec):
            return text
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"codec must be a non-empty string like 'int4:block=64', got {text!r}")
        raw = text.strip().lower()
        topk: float | None = None
        rest = raw
        if raw.startswith("topk"):
            head, plus, rest = raw.partition("+")
            name, colon, fraction = head.partition(":")
            if name != "topk" or not colon:
                raise ValueError(
                    f"codec {text!r}: write top-k as 'topk:FRACTION', e.g. 'topk:0.05'"
                )
            try:
                topk = float(fraction)
            except ValueError:
                raise ValueError(
                    f"codec {text!r}: top-k fraction {fraction!r} is not a number"
                ) from None
            if not plus:
                rest = "fp32"
            elif not rest:
                raise ValueError(f"codec {text!r}: nothing after '+'")
        values, *options = rest.split(":")
        fields: dict = {"values": values, "topk": topk}
        for option in options:
            key, eq, value = option.partition("=")
            if option in ("stochastic", "nearest"):
                if "stochastic" in fields:
                    raise ValueError(f"codec {text!r}: rounding given twice")
                fields["stochastic"] = option == "stochastic"
            elif key == "block" and eq:
                try:
                    fields["block"] = int(value)
                except ValueError:
                    raise ValueError(f"codec {text!r}: block={value!r} is not an integer") from None
            elif key == "per" and eq:
                fields["per"] = value
            else:
                raise ValueError(
                    f"codec {text!r}: unknown option {option!r} "
                    "(expected block=N, per=block|row|tensor, stochastic or nearest)"
                )
        if values in INT_VALUES and fields.get("per") not in (None, "block") and "block" in fields:
            raise ValueError(f"codec {text!r}: block=N conflicts with per={fields['per']}")
        try:
            return cls(**fields)
        except ValueError as error:
            raise ValueError(f"codec {text!r}: {error}") from None

    def __str__(self) -> str:
        if self.is_integer:
            granularity = f"block={self.block}" if self.per == "block" else f"per={self.per}"
            body = f"{self.values}:{granularity}" + (":stochastic" if self.stochastic else "")
        else:
            body = self.values
        if self.topk is None:
            return body
        prefix = f"topk:{self.topk!r}"
        return prefix if body == "fp32" else f"{prefix}+{body}"
