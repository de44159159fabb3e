#include "loom/search/chart.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

namespace loom {
namespace {

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

// Ticks at a round step covering [lo, hi].
std::vector<double> ticks(double lo, double hi) {
  const double span = hi - lo;
  const double raw = span / 5, magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * magnitude) {
      step = m * magnitude;
      break;
    }
  std::vector<double> out;
  for (double t = std::ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) out.push_back(t);
  return out;
}

// One chart's body, drawn in a box at (ox, oy).
std::string body(const ScatterChart& c, int ox, int oy) {
  const double left = ox + 64, right = ox + c.width - 170, top = oy + 36, bottom = oy + c.height - 48;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const auto& [x, label] : c.x_marks) x0 = std::min(x0, x), x1 = std::max(x1, x);
  for (const auto& s : c.series)
    for (const auto& p : s.points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      x0 = std::min(x0, p.x), x1 = std::max(x1, p.x), y0 = std::min(y0, p.y), y1 = std::max(y1, p.y);
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 - x0 < 1e-12) x0 -= 0.5, x1 += 0.5;
  if (y1 - y0 < 1e-12) y0 -= 0.5, y1 += 0.5;
  const double px = 0.05 * (x1 - x0), py = 0.05 * (y1 - y0);
  x0 -= px, x1 += px, y0 -= py, y1 += py;
  auto X = [&](double x) { return left + (x - x0) / (x1 - x0) * (right - left); };
  auto Y = [&](double y) { return bottom - (y - y0) / (y1 - y0) * (bottom - top); };
  std::string svg;
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
                     (left + right) / 2, oy + 20, escape(c.title));
  for (double t : ticks(x0, x1)) {
    svg +=
        fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>\n", X(t), top, bottom);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.4g}</text>\n", X(t), bottom + 16, t);
  }
  for (double t : ticks(y0, y1)) {
    svg += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n", left, Y(t), right,
                       Y(t));
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.4g}</text>\n", left - 6, Y(t) + 4, t);
  }
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", left, top,
                     right - left, bottom - top);
  svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (left + right) / 2, bottom + 36,
                     escape(c.x_label));
  svg += fmt::format(
      "<text x=\"{0}\" y=\"{1:.1f}\" text-anchor=\"middle\" transform=\"rotate(-90 {0} {1:.1f})\">{2}</text>\n",
      ox + 16, (top + bottom) / 2, escape(c.y_label));
  for (const auto& [x, label] : c.x_marks) {
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#d62728\" stroke-dasharray=\"5,4\"/>\n",
        X(x), top, bottom);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" font-size=\"11\" fill=\"#d62728\">{}</text>\n", X(x) + 4, top + 14,
                       escape(label));
  }
  int legend = 0;
  for (const auto& s : c.series) {
    std::vector<ScatterPoint> pts;
    for (const auto& p : s.points)
      if (std::isfinite(p.x) && std::isfinite(p.y)) pts.push_back(p);
    if (s.line && pts.size() > 1) {
      std::sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.x < b.x; });
      std::string points;
      for (const auto& p : pts) points += fmt::format("{:.1f},{:.1f} ", X(p.x), Y(p.y));
      svg +=
          fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n", s.colour, points);
    }
    for (const auto& p : pts) {
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{}\" fill=\"{}\" fill-opacity=\"0.75\"/>\n", X(p.x),
                         Y(p.y), s.radius, s.colour);
      if (!p.label.empty())
        svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\">{}</text>\n", X(p.x) + 6, Y(p.y) - 6,
                           escape(p.label));
    }
    if (!s.name.empty()) {
      const double ly = top + 8 + 18 * legend++;
      svg += fmt::format("<circle cx=\"{}\" cy=\"{:.1f}\" r=\"5\" fill=\"{}\"/>\n", right + 16, ly, s.colour);
      svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\">{}</text>\n", right + 26, ly + 4, escape(s.name));
    }
  }
  return svg;
}

std::string frame(int width, int height, const std::string& inner) {
  return fmt::format(
             "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
             "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n",
             width, height) +
         inner + "</svg>\n";
}

}  // namespace

std::string scatter_svg(const ScatterChart& chart) { return frame(chart.width, chart.height, body(chart, 0, 0)); }

std::string scatter_grid_svg(const std::vector<ScatterChart>& charts, int columns) {
  if (charts.empty()) return frame(10, 10, "");
  columns = std::max(1, columns);
  const int w = charts[0].width, h = charts[0].height;
  const int rows = (static_cast<int>(charts.size()) + columns - 1) / columns;
  std::string inner;
  for (size_t i = 0; i < charts.size(); ++i)
    inner += body(charts[i], static_cast<int>(i % columns) * w, static_cast<int>(i / columns) * h);
  return frame(columns * w, rows * h, inner);
}

}  // namespace loom
