#include "runtime/jinja/lexer.h"

#include <cctype>

#include "runtime/jinja/ast.h"

namespace ds3::jinja {


// Splits the source applying whitespace control ({%- -%}) and transformers' settings
// trim_blocks (drop the newline after a block tag) and lstrip_blocks (drop indentation
// before a block tag that starts a line).
std::vector<Segment> lex_template(const std::string& src) {
    std::vector<Segment> out;
    size_t pos = 0, n = src.size();
    bool strip_next = false, trim_next = false;
    auto push_text = [&](std::string t, size_t off) {
        if (strip_next) {
            size_t k = 0;
            while (k < t.size() && is_space(t[k])) ++k;
            t.erase(0, k);
        } else if (trim_next) {
            if (t.rfind("\r\n", 0) == 0) t.erase(0, 2);
            else if (!t.empty() && t[0] == '\n') t.erase(0, 1);
        }
        strip_next = trim_next = false;
        out.push_back({SegKind::Text, std::move(t), off});
    };
    while (pos < n) {
        size_t start = src.find('{', pos);
        while (start != std::string::npos && start + 1 < n && src[start + 1] != '{' && src[start + 1] != '%' &&
               src[start + 1] != '#')
            start = src.find('{', start + 1);
        if (start == std::string::npos || start + 1 >= n) {
            push_text(src.substr(pos), pos);
            break;
        }
        char kind = src[start + 1];
        std::string text = src.substr(pos, start - pos);
        size_t body = start + 2;
        char mod = body < n ? src[body] : '\0';
        if (mod == '-') {
            while (!text.empty() && is_space(text.back())) text.pop_back();
            ++body;
        } else if (mod == '+') {
            ++body;
        } else if (kind != '{') {
            // lstrip_blocks: only spaces/tabs between the line start and the tag.
            size_t k = text.size();
            while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
            bool line_start = k > 0 ? text[k - 1] == '\n' : (pos == 0 || src[pos - 1] == '\n');
            if (line_start) text.erase(k);
        }
        push_text(std::move(text), pos);
        // Find the closing delimiter, skipping string literals inside the tag.
        std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
        size_t i = body;
        char quote = 0;
        size_t end = std::string::npos;
        for (; i < n; ++i) {
            char c = src[i];
            if (kind != '#' && quote) {
                if (c == '\\') ++i;
                else if (c == quote) quote = 0;
                continue;
            }
            if (kind != '#' && (c == '\'' || c == '"')) {
                quote = c;
                continue;
            }
            if (src.compare(i, 2, close) == 0) {
                end = i;
                break;
            }
        }
        if (end == std::string::npos) fail("unclosed '{" + std::string(1, kind) + "' at offset " + std::to_string(start));
        size_t inner_end = end;
        bool strip_after = false;
        if (inner_end > body && src[inner_end - 1] == '-') {
            strip_after = true;
            --inner_end;
        }
        if (kind != '#')
            out.push_back({kind == '{' ? SegKind::Expr : SegKind::Stmt, src.substr(body, inner_end - body), start});
        pos = end + 2;
        if (strip_after) strip_next = true;
        else if (kind != '{') trim_next = true;
    }
    return out;
}

std::vector<Token> lex_expr(const std::string& s, size_t where) {
    std::vector<Token> out;
    size_t i = 0, n = s.size();
    while (i < n) {
        char c = s[i];
        if (is_space(c)) {
            ++i;
            continue;
        }
        if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t j = i;
            while (j < n && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
            out.push_back({Tok::Name, s.substr(i, j - i)});
            i = j;
        } else if (std::isdigit(static_cast<unsigned char>(c))) {
            size_t j = i;
            while (j < n && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
            bool is_float = j + 1 < n && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]));
            if (is_float) {
                ++j;
                while (j < n && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
            }
            out.push_back({is_float ? Tok::Float : Tok::Int, s.substr(i, j - i)});
            i = j;
        } else if (c == '\'' || c == '"') {
            std::string v;
            size_t j = i + 1;
            for (; j < n && s[j] != c; ++j) {
                if (s[j] == '\\' && j + 1 < n) {
                    char e = s[++j];
                    switch (e) {
                        case 'n': v += '\n'; break;
                        case 't': v += '\t'; break;
                        case 'r': v += '\r'; break;
                        case '\\': v += '\\'; break;
                        case '\'': v += '\''; break;
                        case '"': v += '"'; break;
                        default: v += '\\'; v += e; break;
                    }
                } else {
                    v += s[j];
                }
            }
            if (j >= n) fail("unterminated string in tag at offset " + std::to_string(where));
            out.push_back({Tok::Str, v});
            i = j + 1;
        } else {
            static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",",
                                        ":", "|", "~", "+", "-", "*", "/", "%", "<", ">", "="};
            bool found = false;
            for (const char* op : ops) {
                size_t len = std::char_traits<char>::length(op);
                if (s.compare(i, len, op) == 0) {
                    out.push_back({Tok::Op, op});
                    i += len;
                    found = true;
                    break;
                }
            }
            if (!found) fail(std::string("unexpected character '") + c + "' in tag at offset " + std::to_string(where));
        }
    }
    out.push_back({Tok::End, ""});
    return out;
}

}  // namespace ds3::jinja
