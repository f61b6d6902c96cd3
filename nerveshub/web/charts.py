"""Charts and maps drawn on the server: an SVG line per series and a grid of
map tiles with a marker, so the pages need no chart or map library, and a map
whose tiles cannot be loaded still shows the marker and the coordinates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from django.utils.html import format_html
from django.utils.safestring import SafeString

WIDTH, HEIGHT, PAD = 320, 80, 4


def line_chart(points: list[tuple[float, float]], *, width: int = WIDTH, height: int = HEIGHT) -> SafeString:
    """An SVG polyline of (time, value) points scaled to the box, with the
    value range written on the axis. Only numbers reach the markup."""
    if not points:
        return SafeString("")
    times = [t for t, _ in points]
    values = [v for _, v in points]
    t0, t1 = min(times), max(times)
    v0, v1 = min(values), max(values)
    span_t = (t1 - t0) or 1.0
    span_v = (v1 - v0) or 1.0
    inner_w, inner_h = width - 2 * PAD, height - 2 * PAD
    coords = " ".join(
        f"{PAD + (t - t0) / span_t * inner_w:.1f},{PAD + inner_h - (v - v0) / span_v * inner_h:.1f}" for t, v in points
    )
    first = datetime.fromtimestamp(t0, UTC).strftime("%m-%d %H:%M")
    last = datetime.fromtimestamp(t1, UTC).strftime("%m-%d %H:%M")
    return format_html(
        '<svg class="chart" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{label}">'
        '<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{coords}"/>'
        '<text x="{pad}" y="12" class="axis">{top}</text><text x="{pad}" y="{bottom}" class="axis">{low}</text>'
        "</svg>"
        '<div class="chart-range"><span>{first}</span><span>{last} UTC</span></div>',
        w=width,
        h=height,
        coords=coords,
        pad=PAD + 2,
        bottom=height - PAD - 2,
        top=f"{v1:g}",
        low=f"{v0:g}",
        first=first,
        last=last,
        label=f"from {v0:g} to {v1:g}",
    )


TILE = 256


@dataclass(frozen=True)
class MapTile:
    url: str
    left: int
    top: int


@dataclass(frozen=True)
class MapView:
    latitude: float
    longitude: float
    tiles: list[MapTile]
    # Offset of the 3-by-3 tile block inside the frame, so the marker is centred.
    shift_x: int
    shift_y: int


def coordinates(location: object) -> tuple[float, float] | None:
    """(latitude, longitude) from a location report, or None when it has no
    usable pair (missing, not numbers, out of range)."""
    if not isinstance(location, dict):
        return None
    lat, lon = location.get("latitude"), location.get("longitude")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    if isinstance(lat, bool) or isinstance(lon, bool):
        return None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return None
    return float(lat), float(lon)


def map_view(location: object, tile_url: str, *, zoom: int = 13, frame: tuple[int, int] = (480, 300)) -> MapView | None:
    """The tiles around a location (Web Mercator, as slippy-map tile servers
    number them) and where to place them so the point is in the middle."""
    found = coordinates(location)
    if found is None:
        return None
    lat, lon = found
    n = 2**zoom
    clamped = max(min(lat, 85.0511), -85.0511)
    x = (lon + 180.0) / 360.0 * n
    y = (1.0 - math.asinh(math.tan(math.radians(clamped))) / math.pi) / 2.0 * n
    cx, cy = int(x), int(y)
    tiles = []
    if tile_url:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                tx, ty = (cx + dx) % n, cy + dy
                if 0 <= ty < n:
                    url = tile_url.replace("{z}", str(zoom)).replace("{x}", str(tx)).replace("{y}", str(ty))
                    tiles.append(MapTile(url, (dx + 1) * TILE, (dy + 1) * TILE))
    marker_x = TILE + (x - cx) * TILE
    marker_y = TILE + (y - cy) * TILE
    return MapView(lat, lon, tiles, int(frame[0] / 2 - marker_x), int(frame[1] / 2 - marker_y))


def multi_line_chart(
    series: list[tuple[str, str, list[tuple[float, float]]]], *, width: int = 640, height: int = 160
) -> SafeString:
    """Several lines on one time axis and one value axis from 0, each with a
    CSS class (its colour) and a legend entry."""
    points = [p for _, _, line in series for p in line]
    if not points:
        return SafeString("")
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    top = max(max(v for _, v in points), 1.0)
    span_t = (t1 - t0) or 1.0
    inner_w, inner_h = width - 2 * PAD, height - 2 * PAD
    # Each piece is format_html output (escaped): joined, still safe.
    lines = SafeString(
        "".join(
            format_html(
                '<polyline class="{}" fill="none" stroke-width="2" points="{}"/>',
                css,
                " ".join(
                    f"{PAD + (t - t0) / span_t * inner_w:.1f},{PAD + inner_h - v / top * inner_h:.1f}" for t, v in line
                ),
            )
            for _, css, line in series
        )
    )
    legend = SafeString(
        " ".join(
            format_html('<span class="legend {}">{} {}</span>', css, label, f"{line[-1][1]:g}" if line else "")
            for label, css, line in series
        )
    )
    return format_html(
        '<svg class="chart wide" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"'
        ' aria-label="progress over time">'
        '{lines}<text x="{pad}" y="12" class="axis">{top}</text></svg>'
        '<div class="chart-range"><span>{first}</span><span>{legend}</span><span>{last} UTC</span></div>',
        w=width,
        h=height,
        lines=lines,
        pad=PAD + 2,
        top=f"{top:g}",
        legend=legend,
        first=datetime.fromtimestamp(t0, UTC).strftime("%m-%d %H:%M"),
        last=datetime.fromtimestamp(t1, UTC).strftime("%m-%d %H:%M"),
    )
