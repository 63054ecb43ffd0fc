// `ds3 inspect MODEL.gguf [--json] [--verify]`: metadata (long arrays and strings
// abbreviated), the tensor table, totals by type; --verify recomputes every tensor's
// xxh3-64 and compares it with ds3.checksum.xxh3_64.
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"

namespace {

using namespace ds3;
using namespace ds3::gguf;
using json = nlohmann::ordered_json;  // keeps the file's key order

constexpr size_t kMaxString = 80;       // characters of a string value shown
constexpr size_t kMaxItems = 8;         // arrays up to this long are shown whole
constexpr size_t kHeadItems = 3;        // otherwise: the first few, then "..."
constexpr size_t kJsonMaxItems = 64;    // JSON arrays longer than this carry a head only

// Cuts at a UTF-8 character boundary so that a truncated token still prints cleanly.
std::string truncate_utf8(const std::string& s, size_t max_bytes, bool& cut) {
    cut = s.size() > max_bytes;
    if (!cut) return s;
    size_t n = max_bytes;
    while (n > 0 && (static_cast<uint8_t>(s[n]) & 0xC0) == 0x80) --n;
    return s.substr(0, n);
}

std::string quote(const std::string& s) {
    bool cut = false;
    const std::string t = truncate_utf8(s, kMaxString, cut);
    std::string out = "\"";
    for (unsigned char c : t) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20 || c == 0x7f) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\x%02x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    out += "\"";
    if (cut) out += "... (" + std::to_string(s.size()) + " bytes)";
    return out;
}

std::string format_double(double d) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.9g", d);
    return buf;
}

std::string format_value(const Value& v) {
    switch (v.type) {
        case ValueType::STRING: return quote(v.as_string());
        case ValueType::BOOL: return v.as_bool() ? "true" : "false";
        case ValueType::FLOAT32: case ValueType::FLOAT64: return format_double(v.as_f64());
        case ValueType::ARRAY: {
            const Array& a = v.as_array();
            const size_t n = a.items.size();
            const bool whole = n <= kMaxItems;
            std::string out = "[";
            if (!whole)
                out += std::to_string(n) + " " + std::string(value_type_name(a.elem_type)) +
                       (a.elem_type == ValueType::STRING ? "s" : "") + ": ";
            const size_t shown = whole ? n : kHeadItems;
            for (size_t i = 0; i < shown; ++i) {
                if (i) out += ", ";
                out += format_value(a.items[i]);
            }
            if (!whole) out += ", ... ";
            return out + "]";
        }
        default:
            if (const auto* u = std::get_if<uint64_t>(&v.data)) return std::to_string(*u);
            return std::to_string(v.as_i64());
    }
}

std::string type_label(const Value& v) {
    if (v.type != ValueType::ARRAY) return std::string(value_type_name(v.type));
    return "array<" + std::string(value_type_name(v.as_array().elem_type)) + ">";
}

json value_json(const Value& v) {
    switch (v.type) {
        case ValueType::STRING: return v.as_string();
        case ValueType::BOOL: return v.as_bool();
        case ValueType::FLOAT32: case ValueType::FLOAT64: return v.as_f64();
        case ValueType::ARRAY: {
            json arr = json::array();
            for (const Value& item : v.as_array().items) arr.push_back(value_json(item));
            return arr;
        }
        default:
            if (const auto* u = std::get_if<uint64_t>(&v.data)) return *u;
            return v.as_i64();
    }
}

json kv_json(const Value& v) {
    json j;
    j["type"] = std::string(value_type_name(v.type));
    if (v.type != ValueType::ARRAY) {
        j["value"] = value_json(v);
        return j;
    }
    const Array& a = v.as_array();
    j["elem_type"] = std::string(value_type_name(a.elem_type));
    j["count"] = a.items.size();
    if (a.items.size() <= kJsonMaxItems) {
        j["value"] = value_json(v);
    } else {
        json head = json::array();
        for (size_t i = 0; i < kHeadItems; ++i) head.push_back(value_json(a.items[i]));
        j["head"] = head;
    }
    return j;
}

std::string shape_of(const TensorInfo& t) {
    std::string s = "[";
    for (size_t i = 0; i < t.ne.size(); ++i) s += (i ? ", " : "") + std::to_string(t.ne[i]);
    return s + "]";
}

std::string human_bytes(uint64_t b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(b);
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (u == 0) std::snprintf(buf, sizeof buf, "%" PRIu64 " B", b);
    else std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
    return buf;
}

struct Totals {
    uint64_t count = 0;
    uint64_t bytes = 0;
};

struct VerifyResult {
    bool have_sums = false;
    std::string problem;  // why verification could not run
    std::vector<std::string> mismatches;
    size_t checked = 0;
};

VerifyResult verify(const File& f) {
    VerifyResult r;
    const Value* sums_v = f.find(kChecksumKey);
    if (!sums_v) {
        r.problem = "no checksums: the file has no " + std::string(kChecksumKey) + " key, so there is nothing to verify";
        return r;
    }
    if (sums_v->type != ValueType::ARRAY || sums_v->as_array().elem_type != ValueType::UINT64) {
        r.problem = std::string(kChecksumKey) + " is " + type_label(*sums_v) + ", expected array<u64>";
        return r;
    }
    const Array& sums = sums_v->as_array();
    if (sums.items.size() != f.tensors().size()) {
        r.problem = std::string(kChecksumKey) + " has " + std::to_string(sums.items.size()) + " entries but the file has " +
                    std::to_string(f.tensors().size()) + " tensors";
        return r;
    }
    r.have_sums = true;
    const bool tty = isatty(STDERR_FILENO);
    uint64_t total = 0, done = 0;
    for (const TensorInfo& t : f.tensors()) total += t.nbytes;
    for (size_t i = 0; i < f.tensors().size(); ++i) {
        const TensorInfo& t = f.tensors()[i];
        const uint64_t want = sums.items[i].as_u64();
        const uint64_t got = checksum(f.tensor_data(t));
        if (want != got) {
            char buf[64];
            std::snprintf(buf, sizeof buf, " (expected %016" PRIx64 ", found %016" PRIx64 ")", want, got);
            r.mismatches.push_back(t.name + buf);
        }
        ++r.checked;
        done += t.nbytes;
        if (tty)
            std::fprintf(stderr, "\rverifying: %zu/%zu tensors, %s of %s   ", r.checked, f.tensors().size(),
                         human_bytes(done).c_str(), human_bytes(total).c_str());
    }
    if (tty) std::fprintf(stderr, "\n");
    return r;
}

int run_inspect(const std::string& path, bool as_json, bool do_verify) {
    const File f = File::open(path);

    std::map<std::string, Totals> totals;
    uint64_t tensor_bytes = 0;
    for (const TensorInfo& t : f.tensors()) {
        Totals& tt = totals[std::string(type_traits(t.type).name)];
        ++tt.count;
        tt.bytes += t.nbytes;
        tensor_bytes += t.nbytes;
    }
    auto share = [&](uint64_t b) { return tensor_bytes ? 100.0 * static_cast<double>(b) / static_cast<double>(tensor_bytes) : 0.0; };

    VerifyResult vr;
    if (do_verify) vr = verify(f);
    const bool verify_failed = do_verify && (!vr.have_sums || !vr.mismatches.empty());

    if (as_json) {
        json j;
        j["path"] = path;
        j["file_size"] = f.file_size();
        j["version"] = f.version();
        j["alignment"] = f.alignment();
        j["data_offset"] = f.data_offset();
        json meta = json::object();
        for (const KeyValue& kv : f.metadata()) meta[kv.key] = kv_json(kv.value);
        j["metadata"] = meta;
        json tensors = json::array();
        for (const TensorInfo& t : f.tensors())
            tensors.push_back({{"name", t.name}, {"type", std::string(type_traits(t.type).name)}, {"shape", t.ne},
                               {"offset", t.offset}, {"bytes", t.nbytes}});
        j["tensors"] = tensors;
        json tot = json::object();
        for (const auto& [name, tt] : totals)
            tot[name] = {{"count", tt.count}, {"bytes", tt.bytes}, {"share", share(tt.bytes)}};
        j["totals"] = tot;
        j["tensor_bytes"] = tensor_bytes;
        if (do_verify) {
            json v;
            v["ok"] = !verify_failed;
            v["checked"] = vr.checked;
            v["mismatches"] = vr.mismatches;
            if (!vr.problem.empty()) v["error"] = vr.problem;
            j["verify"] = v;
        }
        std::printf("%s\n", j.dump(2, ' ', false, json::error_handler_t::replace).c_str());
    } else {
        std::printf("file: %s\n", path.c_str());
        std::printf("size: %" PRIu64 " bytes (%s), GGUF v%u, alignment %" PRIu64 ", data at %" PRIu64 "\n",
                    f.file_size(), human_bytes(f.file_size()).c_str(), f.version(), f.alignment(), f.data_offset());
        std::printf("\nmetadata: %zu keys\n", f.metadata().size());
        size_t key_w = 0, type_w = 0;
        for (const KeyValue& kv : f.metadata()) {
            key_w = std::max(key_w, kv.key.size());
            type_w = std::max(type_w, type_label(kv.value).size());
        }
        for (const KeyValue& kv : f.metadata())
            std::printf("  %-*s  %-*s  %s\n", static_cast<int>(key_w), kv.key.c_str(), static_cast<int>(type_w),
                        type_label(kv.value).c_str(), format_value(kv.value).c_str());

        std::printf("\ntensors: %zu\n", f.tensors().size());
        size_t name_w = 4, shape_w = 5;
        for (const TensorInfo& t : f.tensors()) {
            name_w = std::max(name_w, t.name.size());
            shape_w = std::max(shape_w, shape_of(t).size());
        }
        std::printf("  %-*s  %-7s  %-*s  %15s\n", static_cast<int>(name_w), "name", "type", static_cast<int>(shape_w),
                    "shape", "bytes");
        for (const TensorInfo& t : f.tensors())
            std::printf("  %-*s  %-7s  %-*s  %15" PRIu64 "\n", static_cast<int>(name_w), t.name.c_str(),
                        std::string(type_traits(t.type).name).c_str(), static_cast<int>(shape_w), shape_of(t).c_str(),
                        t.nbytes);

        std::printf("\ntotals by type:\n");
        std::printf("  %-7s  %6s  %15s  %10s  %6s\n", "type", "count", "bytes", "", "share");
        for (const auto& [name, tt] : totals)
            std::printf("  %-7s  %6" PRIu64 "  %15" PRIu64 "  %10s  %5.1f%%\n", name.c_str(), tt.count, tt.bytes,
                        human_bytes(tt.bytes).c_str(), share(tt.bytes));
        std::printf("  %-7s  %6zu  %15" PRIu64 "  %10s  %5.1f%%\n", "all", f.tensors().size(), tensor_bytes,
                    human_bytes(tensor_bytes).c_str(), tensor_bytes ? 100.0 : 0.0);

        if (do_verify) {
            std::printf("\n");
            if (!vr.have_sums) {
                std::printf("verify: FAILED: %s\n", vr.problem.c_str());
            } else {
                for (const std::string& m : vr.mismatches) std::printf("checksum mismatch: %s\n", m.c_str());
                if (vr.mismatches.empty())
                    std::printf("verify: OK, %zu tensors match their checksums\n", vr.checked);
                else
                    std::printf("verify: FAILED, %zu of %zu tensors do not match their checksums\n",
                                vr.mismatches.size(), vr.checked);
            }
        }
    }
    if (verify_failed) {
        // A one-line reason on stderr too, so that scripts reading stdout (or the JSON) see it.
        if (!vr.have_sums) {
            std::fprintf(stderr, "ds3 inspect: %s: %s\n", path.c_str(), vr.problem.c_str());
        } else {
            if (as_json)
                for (const std::string& m : vr.mismatches)
                    std::fprintf(stderr, "ds3 inspect: %s: checksum mismatch: %s\n", path.c_str(), m.c_str());
            std::fprintf(stderr, "ds3 inspect: %s: verify failed, %zu tensor(s) do not match their checksums\n",
                         path.c_str(), vr.mismatches.size());
        }
        return 1;
    }
    return 0;
}

ds3::cli::Registrar reg{"inspect", "Show a GGUF file's metadata, tensors and totals; verify its checksums",
                        [](CLI::App& sub) {
                            auto path = std::make_shared<std::string>();
                            auto as_json = std::make_shared<bool>(false);
                            auto do_verify = std::make_shared<bool>(false);
                            sub.add_option("model", *path, "GGUF file")->required();
                            sub.add_flag("--json", *as_json, "Print one JSON object instead of tables");
                            sub.add_flag("--verify", *do_verify,
                                         "Recompute every tensor's xxh3-64 and compare with " +
                                             std::string(kChecksumKey) + "; exit 1 on any mismatch");
                            return [=]() { return run_inspect(*path, *as_json, *do_verify); };
                        }};

}  // namespace
