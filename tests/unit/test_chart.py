"""The instance page's chart (``receiver.chart``): a pure function of samples, threshold,
markers and forecast to an SVG string, parsed back here as XML to check what it draws."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from receiver.chart import HEIGHT, Forecast, Marker, usage_chart

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000.0


def parsed(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # fails on anything not well-formed (an unescaped name, say)


def groups(root: ET.Element, kind: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == kind]


def polyline_points(root: ET.Element) -> list[tuple[float, float]]:
    polyline = root.find(f".//{SVG}polyline")
    assert polyline is not None
    return [(float(x), float(y)) for x, y in (p.split(",") for p in polyline.get("points", "").split())]


def ramp(n: int, start: float = 50.0) -> list[tuple[float, float]]:
    return [(T0 + 60 * i, start + i) for i in range(n)]


def test_given_samples_per_node_then_one_line_per_node_with_a_point_per_sample() -> None:
    root = parsed(usage_chart({"rabbit@b": ramp(5), "rabbit@a": ramp(3)}, title="memory", unit="%"))

    series = groups(root, "series")
    assert [g.get("data-node") for g in series] == ["rabbit@a", "rabbit@b"]
    assert [len(g.find(f"{SVG}polyline").get("points", "").split()) for g in series] == [3, 5]  # type: ignore[union-attr]


def test_given_a_threshold_then_a_line_is_drawn_at_its_height_above_lower_figures() -> None:
    root = parsed(usage_chart({"n": ramp(10)}, title="memory", unit="%", threshold=80.0, ceiling=100.0))

    [threshold] = groups(root, "threshold")
    line = threshold.find(f"{SVG}line")
    assert line is not None and line.get("y1") == line.get("y2")
    top_of_ramp = min(y for _, y in polyline_points(root))
    assert float(line.get("y1", "")) < top_of_ramp  # 80 % is above 59 % (SVG y grows down)
    assert "threshold 80%" in "".join(threshold.itertext())


def test_given_markers_then_only_those_within_the_samples_span_are_drawn() -> None:
    markers = [Marker(T0 + 120, "→ hare-1"), Marker(T0 - 3600, "→ bunny-2")]

    root = parsed(usage_chart({"n": ramp(5)}, title="memory", unit="%", markers=markers))

    [marker] = groups(root, "marker")
    assert "→ hare-1" in "".join(marker.itertext())


def test_given_a_forecast_then_its_line_reaches_the_threshold_beyond_the_last_sample() -> None:
    forecast = Forecast((T0 + 240, 54.0), (T0 + 240 + 1560, 80.0))

    root = parsed(usage_chart({"n": ramp(5)}, title="memory", unit="%", threshold=80.0, forecast=forecast))

    [drawn] = groups(root, "forecast")
    line = drawn.find(f"{SVG}line")
    threshold = groups(root, "threshold")[0].find(f"{SVG}line")
    assert line is not None and threshold is not None
    assert line.get("y2") == threshold.get("y1")  # it ends on the threshold
    last_x = max(x for x, _ in polyline_points(root))
    assert float(line.get("x2", "")) > last_x  # at the projected crossing, after the samples


def test_given_no_samples_then_a_sentence_says_so_and_no_picture() -> None:
    said = usage_chart({"n": []}, title="memory", unit="%", threshold=80.0)

    assert "<svg" not in said and "No samples of memory to draw yet." in said


def test_given_hostile_names_then_everything_is_escaped() -> None:
    evil = '<script>alert("x")</script>&'

    svg = usage_chart({evil: ramp(3)}, title=evil, unit="%", markers=[Marker(T0 + 60, evil)])

    root = parsed(svg)
    assert "<script" not in svg
    assert root.find(f".//{SVG}script") is None
    assert groups(root, "series")[0].get("data-node") == evil  # escaped, not lost
    assert float(root.get("height", "")) == HEIGHT


def test_given_one_sample_then_it_is_drawn_without_dividing_by_zero() -> None:
    root = parsed(usage_chart({"n": [(T0, 70.0)]}, title="memory", unit="%", threshold=80.0))

    assert len(groups(root, "series")) == 1


# Advance widths of DejaVu Sans (Debian's sans-serif) in em, rounded up: wide signs, the rest.
WIDE = {"%": 0.96, "×": 0.84, "+": 0.84, "M": 0.87, "G": 0.78, "→": 0.84, "m": 0.98, "w": 0.82}


def text_extent(text: ET.Element) -> tuple[float, float]:
    """Where a ``<text>`` starts and ends across, by its anchor and an estimate of its width."""
    size = float(text.get("font-size", "11"))
    said = "".join(text.itertext())
    width = sum(WIDE.get(c, 0.64) for c in said) * size
    x = float(text.get("x", "0"))
    anchor = text.get("text-anchor", "start")
    start = x - width if anchor == "end" else x - width / 2 if anchor == "middle" else x
    return start, start + width


def texts(root: ET.Element) -> list[ET.Element]:
    """Every text drawn, with the font size of its group where it has none of its own."""
    found = []
    for group in root.iter(f"{SVG}g"):
        for text in group.iter(f"{SVG}text"):
            if text.get("font-size") is None and group.get("font-size") is not None:
                text.set("font-size", group.get("font-size", ""))
            found.append(text)
    return found


def test_given_large_disk_headroom_then_every_label_stays_inside_the_picture() -> None:
    # 2 TB free over a 1 MB disk_free_limit: a headroom of 2,000,000×, and an upgrade at the end.
    huge = [(T0 + 60 * i, 1_950_000.0 + 5_000 * i) for i in range(10)]

    root = parsed(
        usage_chart(
            {"rabbit@big-01": huge},
            title="disk headroom",
            unit="×",
            threshold=2.0,
            markers=[Marker(T0 + 540, "→ rhino-5")],
        )
    )

    width = float(root.get("viewBox", "").split()[2])
    for text in texts(root):
        start, end = text_extent(text)
        assert start >= 0 and end <= width, f"{''.join(text.itertext())!r} spans {start:.0f}..{end:.0f}"
    top = "".join(t for t in texts(root)[0].itertext())
    assert top.endswith("×") and "e+" not in top  # a figure a person reads, not 2.1e+06
