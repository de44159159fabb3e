#include "loom/core/config.h"

#include <sstream>

namespace loom {

YAML::Node parse_yaml_map(const std::string& yaml, const std::string& source, const std::string& shape,
                          const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    fail("{}: not valid YAML: {}", source, e.what());
  }
  if (!root || root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) fail("{}: expected a mapping of {}, not a single value", source, shape);
  for (const auto& assignment : overrides) apply_override(root, assignment);
  return root;
}

void apply_override(YAML::Node& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    fail("--set '{}': expected key=value, e.g. --set model.d_model=256", assignment);
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail("--set '{}': the value is not valid YAML ({})", assignment, e.msg);
  }
  std::vector<std::string> path;
  std::stringstream parts(key);
  for (std::string part; std::getline(parts, part, '.');) {
    if (part.empty()) fail("--set '{}': empty key component", assignment);
    path.push_back(part);
  }
  // yaml-cpp nodes are handles: walking with operator[] on copies mutates the shared tree.
  if (root && !root.IsMap() && !root.IsNull())
    fail("--set '{}': the document it sets into is not a mapping", assignment);
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    YAML::Node next = chain.back()[path[i]];
    if (next && !next.IsMap() && !next.IsNull()) fail("--set '{}': '{}' is not a section", assignment, path[i]);
    chain.push_back(next);
  }
  chain.back()[path.back()] = value;
}

}  // namespace loom
