// The Jinja2 subset behind ds3's chat templates (runtime/chat_template.h), as four
// stages: lexer.h splits the source into text and tags and tags into tokens, parser.h
// builds the trees declared here, values.h holds the Python-like value semantics, and
// interp.h renders a tree. This header is their shared vocabulary: the value type
// (nlohmann::ordered_json, because Python dicts keep insertion order and `tojson` shows
// it), the error every stage throws, and the expression and statement trees.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "runtime/error.h"

namespace ds3::jinja {

using ojson = nlohmann::ordered_json;

// Every stage reports through Error("template", ...), so callers see one component.
[[noreturn]] inline void fail(const std::string& msg) { throw Error("template", msg); }

inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// ---- expressions ------------------------------------------------------------------------
struct Expr;
using ExprP = std::shared_ptr<Expr>;
enum class EK { Lit, Name, Attr, Index, Slice, Call, Filter, Test, Unary, Binary, Cond, List, Dict };
struct Expr {
    EK kind;
    std::string name;          // Name, Attr, Filter, Test, operators
    ojson value;               // Lit
    std::vector<ExprP> args;   // operands / call args / list items / dict k,v pairs
    std::vector<std::pair<std::string, ExprP>> kwargs;
    bool negate = false;       // `is not`
};

// ---- statements -------------------------------------------------------------------------
struct Node;
using Body = std::vector<std::shared_ptr<Node>>;
enum class NK { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue };
struct Node {
    NK kind;
    std::string text;                                 // Text; Set/SetBlock target; Macro name
    std::string attr;                                 // Set: `ns.attr`
    std::vector<std::string> vars;                    // For loop variables; Macro params
    std::vector<ExprP> defaults;                      // Macro param defaults (null = none)
    ExprP expr;                                       // Output, Set value, For iterable
    ExprP cond;                                       // For `if` filter
    std::vector<std::pair<ExprP, Body>> branches;     // If
    Body body, else_body;                             // For, Macro, SetBlock; If/For else
};

}  // namespace ds3::jinja
