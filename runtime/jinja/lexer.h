// Jinja lexing, in two levels: lex_template() cuts the template source into text, {{ }}
// and {% %} segments (comments dropped), applying whitespace control and transformers'
// trim_blocks/lstrip_blocks; lex_expr() turns one tag's inside into tokens.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace ds3::jinja {

enum class SegKind { Text, Expr, Stmt };
struct Segment {
    SegKind kind;
    std::string text;
    size_t offset;  // in the source, for messages
};

std::vector<Segment> lex_template(const std::string& src);

enum class Tok { Name, Str, Int, Float, Op, End };
struct Token {
    Tok kind;
    std::string text;
};

// The tokens of a tag's inside, ending with Tok::End; `where` (the tag's offset in the
// source) is for error messages.
std::vector<Token> lex_expr(const std::string& s, size_t where);

}  // namespace ds3::jinja
