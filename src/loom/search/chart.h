// Scatter charts as self-contained SVG (no scripts, no fonts fetched): the Pareto chart of
// `loom search evolve` and the proxy scatters of `loom search proxies`.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace loom {

struct ScatterPoint {
  double x = 0, y = 0;
  std::string label;  // drawn beside the point when not empty
};

struct ScatterSeries {
  std::string name;    // legend
  std::string colour;  // CSS colour
  std::vector<ScatterPoint> points;
  bool line = false;    // join the points (sorted by x) with a line
  double radius = 3.5;  // marker radius
};

struct ScatterChart {
  std::string title, x_label, y_label;
  std::vector<ScatterSeries> series;
  std::vector<std::pair<double, std::string>> x_marks;  // dashed vertical lines at x, labelled
  int width = 720, height = 440;
};

std::string scatter_svg(const ScatterChart& chart);

// Several charts side by side in one SVG (`columns` per row).
std::string scatter_grid_svg(const std::vector<ScatterChart>& charts, int columns);

}  // namespace loom
