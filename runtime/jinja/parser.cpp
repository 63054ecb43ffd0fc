#include "runtime/jinja/parser.h"

#include "runtime/jinja/lexer.h"

namespace ds3::jinja {

namespace {

ExprP mk(EK k, std::string name = {}, std::vector<ExprP> args = {}) {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->name = std::move(name);
    e->args = std::move(args);
    return e;
}

class Parser {
public:
    Parser(std::vector<Token> toks, size_t where) : t_(std::move(toks)), where_(where) {}

    const Token& peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
    bool at_end() const { return peek().kind == Tok::End; }
    bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == Tok::Op && peek(k).text == op; }
    bool is_name(const char* nm, size_t k = 0) const { return peek(k).kind == Tok::Name && peek(k).text == nm; }
    Token next() { return t_[p_ < t_.size() - 1 ? p_++ : p_]; }
    void expect_op(const char* op) {
        if (!is_op(op)) error(std::string("expected '") + op + "'");
        ++p_;
    }
    std::string expect_name() {
        if (peek().kind != Tok::Name) error("expected a name");
        return next().text;
    }
    [[noreturn]] void error(const std::string& what) const {
        fail(what + " near '" + peek().text + "' in tag at offset " + std::to_string(where_));
    }

    // An expression without the `a if b else c` form (a for loop's iterable).
    ExprP expression_no_cond() { return or_expr(); }

    ExprP expression() {
        ExprP e = or_expr();
        if (is_name("if")) {
            ++p_;
            ExprP cond = or_expr();
            ExprP other;
            if (is_name("else")) {
                ++p_;
                other = expression();
            }
            auto c = mk(EK::Cond, "", {cond, e});
            if (other) c->args.push_back(other);
            return c;
        }
        return e;
    }

private:
    ExprP or_expr() {
        ExprP e = and_expr();
        while (is_name("or")) {
            ++p_;
            e = mk(EK::Binary, "or", {e, and_expr()});
        }
        return e;
    }
    ExprP and_expr() {
        ExprP e = not_expr();
        while (is_name("and")) {
            ++p_;
            e = mk(EK::Binary, "and", {e, not_expr()});
        }
        return e;
    }
    ExprP not_expr() {
        if (is_name("not")) {
            ++p_;
            return mk(EK::Unary, "not", {not_expr()});
        }
        return compare();
    }
    ExprP compare() {
        ExprP e = math1();
        for (;;) {
            if (peek().kind == Tok::Op && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                           peek().text == ">" || peek().text == "<=" || peek().text == ">=")) {
                std::string op = next().text;
                e = mk(EK::Binary, op, {e, math1()});
            } else if (is_name("in")) {
                ++p_;
                e = mk(EK::Binary, "in", {e, math1()});
            } else if (is_name("not") && is_name("in", 1)) {
                p_ += 2;
                e = mk(EK::Binary, "not in", {e, math1()});
            } else {
                return e;
            }
        }
    }
    ExprP math1() {
        ExprP e = concat();
        while (is_op("+") || is_op("-")) {
            std::string op = next().text;
            e = mk(EK::Binary, op, {e, concat()});
        }
        return e;
    }
    ExprP concat() {
        ExprP e = math2();
        while (is_op("~")) {
            ++p_;
            e = mk(EK::Binary, "~", {e, math2()});
        }
        return e;
    }
    ExprP math2() {
        ExprP e = unary();
        while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
            std::string op = next().text;
            e = mk(EK::Binary, op, {e, unary()});
        }
        return e;
    }
    ExprP unary() {
        if (is_op("-")) {
            ++p_;
            return mk(EK::Unary, "-", {unary()});
        }
        if (is_op("+")) {
            ++p_;
            return unary();
        }
        return postfix(primary());
    }
    void call_args(ExprP& call) {
        // after '(' ; fills args / kwargs until ')'
        while (!is_op(")")) {
            if (peek().kind == Tok::Name && is_op("=", 1)) {
                std::string k = next().text;
                ++p_;
                call->kwargs.emplace_back(k, expression());
            } else {
                call->args.push_back(expression());
            }
            if (!is_op(",")) break;
            ++p_;
        }
        expect_op(")");
    }
    ExprP postfix(ExprP e) {
        for (;;) {
            if (is_op(".")) {
                ++p_;
                e = mk(EK::Attr, expect_name(), {e});
            } else if (is_op("[")) {
                ++p_;
                ExprP a, b, c;
                bool slice = false;
                if (!is_op(":")) a = expression();
                if (is_op(":")) {
                    slice = true;
                    ++p_;
                    if (!is_op("]") && !is_op(":")) b = expression();
                    if (is_op(":")) {
                        ++p_;
                        if (!is_op("]")) c = expression();
                    }
                }
                expect_op("]");
                if (slice) {
                    auto s = mk(EK::Slice, "", {e, a, b, c});
                    e = s;
                } else {
                    e = mk(EK::Index, "", {e, a});
                }
            } else if (is_op("(")) {
                ++p_;
                auto c = mk(EK::Call, "", {e});
                call_args(c);
                e = c;
            } else if (is_op("|")) {
                ++p_;
                auto f = mk(EK::Filter, expect_name(), {e});
                if (is_op("(")) {
                    ++p_;
                    call_args(f);
                }
                e = f;
            } else if (is_name("is")) {
                ++p_;
                bool neg = false;
                if (is_name("not")) {
                    ++p_;
                    neg = true;
                }
                std::string test = expect_name();
                auto t = mk(EK::Test, test, {e});
                t->negate = neg;
                if (is_op("(")) {
                    ++p_;
                    call_args(t);
                } else if (peek().kind == Tok::Str || peek().kind == Tok::Int ||
                           (peek().kind == Tok::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                            !is_name("if") && !is_name("in") && !is_name("not") && !is_name("is"))) {
                    t->args.push_back(primary());  // `x is equalto y`
                }
                e = t;
            } else {
                return e;
            }
        }
    }
    ExprP primary() {
        Token tk = next();
        auto lit = [](ojson v) {
            auto e = mk(EK::Lit);
            e->value = std::move(v);
            return e;
        };
        switch (tk.kind) {
            case Tok::Str: {
                std::string s = tk.text;
                while (peek().kind == Tok::Str) s += next().text;  // adjacent literals concatenate
                return lit(s);
            }
            case Tok::Int: return lit(std::stoll(tk.text));
            case Tok::Float: return lit(std::stod(tk.text));
            case Tok::Name:
                if (tk.text == "true" || tk.text == "True") return lit(true);
                if (tk.text == "false" || tk.text == "False") return lit(false);
                if (tk.text == "none" || tk.text == "None") return lit(nullptr);
                return mk(EK::Name, tk.text);
            case Tok::Op:
                if (tk.text == "(") {
                    ExprP e = expression();
                    if (is_op(",")) {  // tuple -> list
                        auto l = mk(EK::List, "", {e});
                        while (is_op(",")) {
                            ++p_;
                            if (is_op(")")) break;
                            l->args.push_back(expression());
                        }
                        e = l;
                    }
                    expect_op(")");
                    return e;
                }
                if (tk.text == "[") {
                    auto l = mk(EK::List);
                    while (!is_op("]")) {
                        l->args.push_back(expression());
                        if (!is_op(",")) break;
                        ++p_;
                    }
                    expect_op("]");
                    return l;
                }
                if (tk.text == "{") {
                    auto d = mk(EK::Dict);
                    while (!is_op("}")) {
                        d->args.push_back(expression());
                        expect_op(":");
                        d->args.push_back(expression());
                        if (!is_op(",")) break;
                        ++p_;
                    }
                    expect_op("}");
                    return d;
                }
                break;
            case Tok::End: break;
        }
        --p_;
        error("unexpected token");
    }

    std::vector<Token> t_;
    size_t p_ = 0;
    size_t where_;
};

class TemplateParser {
public:
    explicit TemplateParser(std::vector<Segment> segs) : s_(std::move(segs)) {}

    Body parse_all() {
        std::string end_tag;
        Body b = parse_body({}, end_tag);
        return b;
    }

private:
    // Parses until a statement whose first word is in `stops`; that word goes to `stopped`
    // and the statement's parser is left positioned after its keyword.
    Body parse_body(const std::vector<std::string>& stops, std::string& stopped) {
        Body out;
        while (i_ < s_.size()) {
            const Segment& seg = s_[i_++];
            if (seg.kind == SegKind::Text) {
                if (!seg.text.empty()) {
                    auto n = std::make_shared<Node>();
                    n->kind = NK::Text;
                    n->text = seg.text;
                    out.push_back(n);
                }
                continue;
            }
            Parser p(lex_expr(seg.text, seg.offset), seg.offset);
            if (seg.kind == SegKind::Expr) {
                auto n = std::make_shared<Node>();
                n->kind = NK::Output;
                n->expr = p.expression();
                if (!p.at_end()) p.error("unexpected text after expression");
                out.push_back(n);
                continue;
            }
            std::string kw = p.expect_name();
            for (const auto& s : stops)
                if (kw == s) {
                    stopped = kw;
                    cur_ = std::make_unique<Parser>(std::move(p));
                    return out;
                }
            out.push_back(statement(kw, p, seg.offset));
        }
        if (!stops.empty()) fail("missing {% " + stops.back() + " %} at the end of the template");
        return out;
    }

    std::shared_ptr<Node> statement(const std::string& kw, Parser& p, size_t where) {
        auto n = std::make_shared<Node>();
        auto done = [&](Parser& q) {
            if (!q.at_end()) q.error("unexpected text at the end of the tag");
        };
        if (kw == "if") {
            n->kind = NK::If;
            ExprP cond = p.expression();
            done(p);
            for (;;) {
                std::string stop;
                Body b = parse_body({"elif", "else", "endif"}, stop);
                n->branches.emplace_back(cond, std::move(b));
                Parser& q = *cur_;
                if (stop == "elif") {
                    cond = q.expression();
                    done(q);
                    continue;
                }
                done(q);
                if (stop == "else") {
                    std::string stop2;
                    n->else_body = parse_body({"endif"}, stop2);
                    done(*cur_);
                }
                break;
            }
        } else if (kw == "for") {
            n->kind = NK::For;
            n->vars.push_back(p.expect_name());
            while (p.is_op(",")) {
                p.next();
                n->vars.push_back(p.expect_name());
            }
            if (!p.is_name("in")) p.error("expected 'in'");
            p.next();
            n->expr = p.expression_no_cond();
            if (p.is_name("if")) {
                p.next();
                n->cond = p.expression();
            }
            if (p.is_name("recursive")) p.error("recursive loops are not supported");
            done(p);
            std::string stop;
            n->body = parse_body({"else", "endfor"}, stop);
            done(*cur_);
            if (stop == "else") {
                n->else_body = parse_body({"endfor"}, stop);
                done(*cur_);
            }
        } else if (kw == "set") {
            std::string name = p.expect_name();
            std::string attr;
            if (p.is_op(".")) {
                p.next();
                attr = p.expect_name();
            }
            if (p.is_op("=")) {
                p.next();
                n->kind = NK::Set;
                n->text = name;
                n->attr = attr;
                n->expr = p.expression();
                done(p);
            } else {
                if (!attr.empty()) p.error("block set of an attribute is not supported");
                done(p);
                n->kind = NK::SetBlock;
                n->text = name;
                std::string stop;
                n->body = parse_body({"endset"}, stop);
                done(*cur_);
            }
        } else if (kw == "macro") {
            n->kind = NK::Macro;
            n->text = p.expect_name();
            p.expect_op("(");
            while (!p.is_op(")")) {
                n->vars.push_back(p.expect_name());
                ExprP def;
                if (p.is_op("=")) {
                    p.next();
                    def = p.expression();
                }
                n->defaults.push_back(def);
                if (!p.is_op(",")) break;
                p.next();
            }
            p.expect_op(")");
            done(p);
            std::string stop;
            n->body = parse_body({"endmacro"}, stop);
            done(*cur_);
        } else if (kw == "break" || kw == "continue") {
            n->kind = kw == "break" ? NK::Break : NK::Continue;
            done(p);
        } else {
            fail("unsupported statement '{% " + kw + " %}' at offset " + std::to_string(where));
        }
        return n;
    }

    std::vector<Segment> s_;
    size_t i_ = 0;
    std::unique_ptr<Parser> cur_;
};

}  // namespace

Body parse_template(const std::string& src) { return TemplateParser(lex_template(src)).parse_all(); }

}  // namespace ds3::jinja
