"""Units written after a value (length, mass, time, volume, counts, degrees, percent, Chinese
measure words): split a trailing unit off an answer and spell it comparably."""

from __future__ import annotations

import re

_LENGTH = (
    "mm cm dm m km nm um μm µm in inch inches ft foot feet yd yard yards mi mile miles "
    "meter meters metre metres centimeter centimeters centimetre centimetres millimeter "
    "millimeters millimetre millimetres kilometer kilometers kilometre kilometres"
).split()
_MASS = (
    "mg g kg t ton tons tonne tonnes lb lbs pound pounds oz ounce ounces gram grams "
    "kilogram kilograms milligram milligrams"
).split()
_TIME = (
    "ms s sec secs second seconds min mins minute minutes h hr hrs hour hours day days "
    "week weeks month months year years yr yrs"
).split()
_VOLUME = "ml mL l L liter liters litre litres milliliter milliliters millilitre millilitres".split()
_COUNT = (
    "people person persons student students child children time times item items piece pieces "
    "object objects unit units"
).split()
_DEGREE = (
    "° °C °F ℃ ℉ degree degrees \\circ ^\\circ ^{\\circ} \\circ C \\circ F ^\\circ C ^\\circ F "
    "^{\\circ}C ^{\\circ}F ^\\circC ^\\circF"
).split(" ")
_PERCENT = ["%", "\\%", "percent"]
_CHINESE = (
    "个 只 条 人 名 位 次 本 张 辆 块 元 角 岁 天 年 月 周 小时 分钟 秒 毫米 厘米 分米 米 千米 公里 "
    "克 千克 公斤 吨 升 毫升 平方米 平方厘米 平方分米 平方千米 立方米 立方厘米 立方分米 度 棵 朵 支 "
    "件 台 头 匹 颗 倍"
).split()


def _unit_alternation() -> str:
    """One regex alternation of every recognised unit, longest first."""
    units = set(_LENGTH + _MASS + _TIME + _VOLUME + _COUNT + _DEGREE + _PERCENT + _CHINESE)
    alts = [re.escape(u).replace("\\ ", r"\s*") for u in units]
    length = "|".join(re.escape(u) for u in sorted(_LENGTH, key=len, reverse=True))
    alts.append(rf"(?:square|sq\.?|cubic)\s+(?:{length})")
    alts.append(rf"(?:{length})\s*(?:\^\s*\{{?\s*[23]\s*\}}?|[²³])")
    return "|".join(sorted(alts, key=len, reverse=True))


_UNIT_ALT = _unit_alternation()
_UNIT_SPACED_RE = re.compile(rf"^(?P<value>.*?\S)\s+(?P<unit>{_UNIT_ALT})$", re.DOTALL)
_UNIT_ATTACHED_RE = re.compile(rf"^(?P<value>.*?[\d}})])(?P<unit>{_UNIT_ALT})$", re.DOTALL)


def _canonical_unit(unit: str) -> str:
    """A comparable spelling of a unit: degree, percent, square and cube forms unified."""
    u = re.sub(r"[\s{}]", "", unit)
    u = u.replace("℃", "°C").replace("℉", "°F").replace("^\\circ", "°").replace("\\circ", "°")
    u = u.replace("\\%", "%").replace("²", "^2").replace("³", "^3")
    u = u.lower()
    if u in ("degree", "degrees"):
        u = "°"
    if u == "percent":
        u = "%"
    power = ""
    m = re.match(r"^(square|sq\.?|cubic)(.+)$", u)
    if m:
        u, power = m.group(2), "^3" if m.group(1) == "cubic" else "^2"
    if u.isalpha() and len(u) > 3 and u.endswith("s"):
        u = u[:-1]
    return u + power


def strip_units(s: str) -> tuple[str, str | None]:
    """Split a trailing recognised unit off ``s``: ``(value, canonical unit)`` or ``(s, None)``.

    The unit must follow whitespace, or directly follow a digit, ``}`` or ``)`` (so ``Adam`` is
    not "Ada" + "m").
    """
    s = s.strip()
    m = _UNIT_SPACED_RE.match(s) or _UNIT_ATTACHED_RE.match(s)
    if m is None:
        return s, None
    return m.group("value").strip(), _canonical_unit(m.group("unit"))
