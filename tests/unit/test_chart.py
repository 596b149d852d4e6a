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
