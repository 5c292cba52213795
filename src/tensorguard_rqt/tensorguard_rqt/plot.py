"""A small per-round line plot drawn with QPainter (no plotting library needed inside rqt)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from python_qt_binding.QtCore import QPointF, QRectF, Qt
from python_qt_binding.QtGui import QColor, QPainter, QPen
from python_qt_binding.QtWidgets import QSizePolicy, QWidget

MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 12, 26, 34
PAD = 16  # between the y axis (or the right edge) and the first (last) round


@dataclass(frozen=True)
class Series:
    """One line: a value per round of the plot (NaN where the round has none), `width` pixels wide."""

    name: str
    values: tuple[float, ...]
    color: str
    dashed: bool = False
    width: int = 2


@dataclass(frozen=True)
class PlotData:
    """What the plot shows: the rounds on x, the series on y, and a fixed y maximum or None (from the data)."""

    rounds: tuple[int, ...] = ()
    series: tuple[Series, ...] = ()
    y_max: float | None = None

    def upper(self) -> float:
        """The top of the y axis."""
        if self.y_max is not None:
            return self.y_max
        finite = [v for s in self.series for v in s.values if math.isfinite(v)]
        return max(1.0, max(finite, default=1.0) * 1.1)


class RoundPlot(QWidget):
    """Draws a PlotData: a legend above the axes, a grid, one polyline with dots per series."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._data = PlotData()
        self.setMinimumSize(320, 180)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)

    def data(self) -> PlotData:
        """The data on screen."""
        return self._data

    def set_data(self, data: PlotData) -> None:
        """Show `data`; repaints only when it changed."""
        if data != self._data:
            self._data = data
            self.update()

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), self.palette().base())
        area = QRectF(MARGIN_LEFT, MARGIN_TOP, max(1, self.width() - MARGIN_LEFT - MARGIN_RIGHT),
                      max(1, self.height() - MARGIN_TOP - MARGIN_BOTTOM))
        data = self._data
        text = self.palette().text().color()
        self._draw_axes(painter, area, data, text)
        if data.rounds:
            for series in reversed(data.series):  # the first series on top
                self._draw_series(painter, area, data, series)
        else:
            painter.setPen(text)
            painter.drawText(area, int(Qt.AlignCenter), 'no round yet')
        self._draw_legend(painter, area, data)
        painter.end()

    @staticmethod
    def _x(area: QRectF, data: PlotData, index: int) -> float:
        if len(data.rounds) < 2:
            return area.center().x()
        return area.left() + PAD + (area.width() - 2 * PAD) * index / (len(data.rounds) - 1)

    @staticmethod
    def _y(area: QRectF, top: float, value: float) -> float:
        return area.bottom() - area.height() * min(max(value / top, 0.0), 1.0)

    def _draw_axes(self, painter: QPainter, area: QRectF, data: PlotData, text: QColor) -> None:
        top = data.upper()
        grid = QPen(QColor(text.red(), text.green(), text.blue(), 50))
        grid.setStyle(Qt.DotLine)
        for step in range(5):
            value = top * step / 4
            y = self._y(area, top, value)
            painter.setPen(grid)
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            painter.setPen(text)
            label = f'{value:.2f}' if top <= 1.0 else f'{value:.3g}'
            painter.drawText(QRectF(0, y - 8, MARGIN_LEFT - 4, 16), int(Qt.AlignRight | Qt.AlignVCenter), label)
        painter.setPen(QPen(text, 1))
        painter.drawLine(area.bottomLeft(), area.bottomRight())
        painter.drawLine(area.bottomLeft(), area.topLeft())
        every = max(1, math.ceil(len(data.rounds) / 12))
        for index, round_id in enumerate(data.rounds):
            if index % every == 0 or index == len(data.rounds) - 1:
                x = self._x(area, data, index)
                painter.drawText(QRectF(x - 20, area.bottom() + 3, 40, 14), int(Qt.AlignCenter), str(round_id))
        painter.drawText(QRectF(area.left(), area.bottom() + 18, area.width(), 14), int(Qt.AlignCenter), 'round')

    @staticmethod
    def _pen(series: Series) -> QPen:
        return QPen(QColor(series.color), series.width, Qt.DashLine if series.dashed else Qt.SolidLine)

    def _draw_series(self, painter: QPainter, area: QRectF, data: PlotData, series: Series) -> None:
        top = data.upper()
        painter.setPen(self._pen(series))
        painter.setBrush(QColor(series.color))
        previous = None
        for index, value in enumerate(series.values):
            if not math.isfinite(value):
                previous = None
                continue
            point = QPointF(self._x(area, data, index), self._y(area, top, value))
            if previous is not None:
                painter.drawLine(previous, point)
            painter.drawEllipse(point, 3, 3)
            previous = point
        painter.setBrush(Qt.NoBrush)

    def _draw_legend(self, painter: QPainter, area: QRectF, data: PlotData) -> None:
        x, y = area.left(), MARGIN_TOP / 2
        for series in data.series:
            painter.setPen(self._pen(series))
            painter.drawLine(QPointF(x, y), QPointF(x + 16, y))
            painter.setPen(self.palette().text().color())
            width = painter.fontMetrics().horizontalAdvance(series.name)
            painter.drawText(QRectF(x + 20, 0, width + 4, MARGIN_TOP), int(Qt.AlignLeft | Qt.AlignVCenter), series.name)
            x += 36 + width
