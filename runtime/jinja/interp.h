// The Jinja interpreter: renders a parsed template (parser.h) with the given global
// variables. Throws Error("template", ...) on a runtime error, including the template's
// raise_exception() and a {% break %}/{% continue %} outside a loop.
#pragma once

#include <map>
#include <string>

#include "runtime/jinja/ast.h"
#include "runtime/jinja/values.h"

namespace ds3::jinja {

using Scope = std::map<std::string, Val>;

std::string render(const Body& body, Scope globals);

}  // namespace ds3::jinja
