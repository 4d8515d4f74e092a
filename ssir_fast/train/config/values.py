"""The project's own value syntaxes, which the command-line library reads through these
functions: comma lists (``--milestones 60,80``), bin ranges (``--many-bins 2-5,9``) and
``k=v`` mappings (``--data-options n_train=500,features=age,bmi``). Each also takes the value
already parsed (a list or a mapping, as a config file gives it), so parsing twice is harmless.
Every other type is checked by the library against the field's type."""
import math

__all__ = ["list_of", "parse_ranges", "parse_kv", "integral"]


def integral(v):
    """An int from an int, an integral float (2.0, 1e3) or a string of one; else ValueError."""
    if isinstance(v, str):
        text = v.strip()
        try:
            return int(text)
        except ValueError:
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"expected an integer, got {text!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected an integer, got {v!r}")
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        raise ValueError(f"expected an integer, got {v!r}")
    return int(v)


def _number(v):
    try:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError
        return float(v)
    except ValueError:
        raise ValueError(f"expected a number, got {v!r}") from None


def list_of(kind):
    """'60,80' (or [60, 80]) -> [60, 80], each item an integer (kind int) or a number."""
    item = integral if kind is int else _number

    def parse(value):
        items = str(value).replace(" ", "").split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a comma-separated list, got {value!r}")
        return [item(t) for t in items if t != ""]
    parse.__name__ = f"list_of_{kind.__name__}"
    return parse


def parse_ranges(value):
    """'2-5,9,11-12' -> [2, 3, 4, 5, 9, 11, 12] (bin indices; ranges inclusive); a list of
    indices passes as it is."""
    if not isinstance(value, str):
        return list_of(int)(value)
    out = []
    for item in value.replace(" ", "").split(","):
        if not item:
            continue
        lo, sep, hi = item.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"expected bin indices like 2-5,9, got {value!r}") from None
        if b < a:
            raise ValueError(f"empty range {item!r} in {value!r}")
        out += range(a, b + 1)
    return out


def _auto(v):
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def parse_kv(value):
    """'k=v,k2=v2' -> {k: v, k2: v2}; an item without '=' continues the value before it as a
    list: 'features=age,bmi,on_error=skip' -> {features: [age, bmi], on_error: skip}. A mapping
    passes as it is."""
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        raise ValueError(f"expected k=v,k=v or a mapping, got {value!r}")
    out, last = {}, None
    for item in value.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            if last is None:
                raise ValueError(f"expected k=v,k=v (a list value: k=a,b), got {value!r}")
            prev = out[last]
            out[last] = (prev if isinstance(prev, list) else [prev]) + [_auto(item.strip())]
            continue
        k, v = item.split("=", 1)
        last = k.strip()
        out[last] = _auto(v.strip())
    return out
