// GGUF reader/writer round trips: every value type, nested and empty arrays, several
// alignments, tensors of several types with odd shapes, checksums, and the temporary
// file of an unfinished writer.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>

#include "common.h"
#include "runtime/error.h"
#include "runtime/gguf/gguf.h"
#include "runtime/signals.h"

using namespace ds3;
using namespace ds3::gguf;
namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7 + (i >> 8));
    return v;
}

size_t files_in(const fs::path& dir) {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    return n;
}

}  // namespace

TEST_CASE("every metadata value type round-trips", "[gguf]") {
    const fs::path dir = test::scratch_dir("gguf-values");
    const std::string path = (dir / "v.gguf").string();
    {
        Writer w(path);
        w.set_kv("u8", Value::u8(250));
        w.set_kv("i8", Value::i8(-120));
        w.set_kv("u16", Value::u16(65000));
        w.set_kv("i16", Value::i16(-32000));
        w.set_kv("u32", Value::u32(4000000000u));
        w.set_kv("i32", Value::i32(-2000000000));
        w.set_kv("u64", Value::u64(18000000000000000000ull));
        w.set_kv("i64", Value::i64(-9000000000000000000ll));
        w.set_kv("f32", Value::f32(0.1f));
        w.set_kv("f64", Value::f64(-1e300));
        w.set_kv("bool_t", Value::boolean(true));
        w.set_kv("bool_f", Value::boolean(false));
        w.set_kv("str", Value::str("h\xc3\xa9llo\n"));
        w.set_kv("str_empty", Value::str(""));
        w.set_kv("arr_empty", Value::array(ValueType::FLOAT64, {}));
        w.set_kv("arr_strings", Value::strings({"a", "", "<｜begin▁of▁sentence｜>"}));
        w.set_kv("arr_i32", Value::i32s({1, -2, 3}));
        w.set_kv("arr_f32", Value::f32s({1.5f, -0.25f}));
        w.set_kv("arr_nested", Value::array(ValueType::ARRAY,
                                            {Value::i32s({7, 8}), Value::array(ValueType::UINT8, {}),
                                             Value::strings({"x"})}));
        w.set_kv("arr_deep", Value::array(ValueType::ARRAY, {Value::array(ValueType::ARRAY, {Value::i32s({42})})}));
        w.set_kv("replaced", Value::u8(1));
        w.set_kv("replaced", Value::str("second"));
        w.finish();
    }
    const File f = File::open(path);
    CHECK(f.version() == 3);
    CHECK(f.alignment() == 32);
    CHECK(f.tensors().empty());
    CHECK(f.find("u8")->type == ValueType::UINT8);
    CHECK(f.get_u64("u8") == 250);
    CHECK(f.get_i64("i8") == -120);
    CHECK(f.find("i8")->type == ValueType::INT8);
    CHECK(f.get_u64("u16") == 65000);
    CHECK(f.get_i64("i16") == -32000);
    CHECK(f.get_u64("u32") == 4000000000u);
    CHECK(f.get_i64("i32") == -2000000000);
    CHECK(f.get_u64("u64") == 18000000000000000000ull);
    CHECK(f.get_i64("i64") == -9000000000000000000ll);
    CHECK(f.get_f64("f32") == double{0.1f});
    CHECK(f.find("f32")->type == ValueType::FLOAT32);
    CHECK(f.get_f64("f64") == -1e300);
    CHECK(f.get_bool("bool_t"));
    CHECK_FALSE(f.get_bool("bool_f"));
    CHECK(f.get_string("str") == "h\xc3\xa9llo\n");
    CHECK(f.get_string("str_empty").empty());
    CHECK(f.get_array("arr_empty").items.empty());
    CHECK(f.get_array("arr_empty").elem_type == ValueType::FLOAT64);
    const Array& s = f.get_array("arr_strings");
    REQUIRE(s.items.size() == 3);
    CHECK(s.items[1].as_string().empty());
    CHECK(s.items[2].as_string() == "<｜begin▁of▁sentence｜>");
    CHECK(f.get_array("arr_i32").items[1].as_i64() == -2);
    CHECK(f.get_array("arr_f32").items[1].as_f64() == -0.25);
    const Array& n = f.get_array("arr_nested");
    REQUIRE(n.items.size() == 3);
    CHECK(n.items[0].as_array().items[1].as_i64() == 8);
    CHECK(n.items[1].as_array().items.empty());
    CHECK(n.items[1].as_array().elem_type == ValueType::UINT8);
    CHECK(n.items[2].as_array().items[0].as_string() == "x");
    CHECK(f.get_array("arr_deep").items[0].as_array().items[0].as_array().items[0].as_i64() == 42);
    CHECK(f.get_string("replaced") == "second");
    // Key order is kept (the checksum key comes last).
    CHECK(f.metadata().front().key == "u8");
    CHECK(f.metadata().back().key == kChecksumKey);
    CHECK(f.get_array(kChecksumKey).items.empty());
    // Defaults and typed-getter errors name the key.
    CHECK(f.get_u64("absent", 7) == 7);
    CHECK(f.get_string("absent", "d") == "d");
    CHECK_THROWS_WITH(f.get_u64("str"), Catch::Contains("key 'str'") && Catch::Contains("found string"));
    CHECK_THROWS_WITH(f.get_u64("i8"), Catch::Contains("non-negative"));
    CHECK_THROWS_WITH(f.get_i64("u64"), Catch::Contains("fits in i64"));
    CHECK_THROWS_WITH(f.get_string("absent"), Catch::Contains("missing key 'absent'"));
    CHECK(f.get_f64("u8") == 250.0);
}

TEST_CASE("tensors of several types and odd shapes round-trip with checksums", "[gguf]") {
    const uint64_t alignment = GENERATE(uint64_t{1}, uint64_t{32}, uint64_t{64}, uint64_t{4096});
    const fs::path dir = test::scratch_dir("gguf-tensors");
    const std::string path = (dir / "t.gguf").string();
    struct Spec {
        std::string name;
        std::vector<uint64_t> ne;
        TypeId type;
    };
    const std::vector<Spec> specs = {
        {"a.f32", {35}, TypeId::F32},
        {"b.f16", {33, 3}, TypeId::F16},
        {"c.bf16", {1, 1, 7}, TypeId::BF16},
        {"d.q8_0", {64, 5}, TypeId::Q8_0},
        {"e.q4_k", {256, 3, 1, 2}, TypeId::Q4_K},
        {"f.empty", {0, 4}, TypeId::F32},
        {"g.i8", {3}, TypeId::I8},
    };
    std::vector<std::vector<uint8_t>> datas;
    {
        Writer w(path, alignment);
        w.set_kv("general.architecture", Value::str("test"));
        for (const auto& s : specs) w.add_tensor(s.name, s.ne, s.type);
        w.write_header();
        uint8_t seed = 1;
        for (const auto& t : w.tensors()) {
            datas.push_back(pattern(t.nbytes, seed++));
            if (t.name == "e.q4_k") {  // in uneven chunks
                const auto& d = datas.back();
                w.begin_tensor();
                w.write_chunk({d.data(), 1});
                w.write_chunk({d.data() + 1, 500});
                w.write_chunk({d.data() + 501, d.size() - 501});
                w.end_tensor();
            } else {
                w.write_tensor_data(datas.back());
            }
        }
        CHECK(fs::exists(w.temp_path()));
        CHECK_FALSE(fs::exists(path));
        w.finish();
        CHECK_FALSE(fs::exists(w.temp_path()));
    }
    CHECK(files_in(dir) == 1);
    const File f = File::open(path);
    CHECK(f.alignment() == alignment);
    CHECK(f.data_offset() % alignment == 0);
    CHECK(f.file_size() % alignment == 0);
    if (alignment != 32) CHECK(f.get_u64("general.alignment") == alignment);
    else CHECK_FALSE(f.has("general.alignment"));
    REQUIRE(f.tensors().size() == specs.size());
    const Array& sums = f.get_array(kChecksumKey);
    REQUIRE(sums.items.size() == specs.size());
    CHECK(sums.elem_type == ValueType::UINT64);
    for (size_t i = 0; i < specs.size(); ++i) {
        const TensorInfo& t = f.tensors()[i];
        CHECK(t.name == specs[i].name);
        CHECK(t.ne == specs[i].ne);
        CHECK(t.type == specs[i].type);
        CHECK(t.offset % alignment == 0);
        CHECK(t.nbytes == datas[i].size());
        const auto view = f.tensor_data(t);
        REQUIRE(view.size() == datas[i].size());
        if (!view.empty()) CHECK(std::memcmp(view.data(), datas[i].data(), view.size()) == 0);
        CHECK(sums.items[i].as_u64() == checksum(datas[i]));
        CHECK(&f.tensor(t.name) == &t);
    }
    CHECK(f.tensor("d.q8_0").nbytes == 2 * 5 * 34);
    CHECK(f.tensor("e.q4_k").n_elements() == 256 * 3 * 2);
    CHECK(f.find_tensor("nope") == nullptr);
    CHECK_THROWS_WITH(f.tensor("nope"), Catch::Contains("no tensor named 'nope'"));

    // The same bytes parse from memory too.
    const std::string img = test::read_file(path);
    const File m = File::parse({reinterpret_cast<const uint8_t*>(img.data()), img.size()});
    CHECK(m.tensors().size() == specs.size());
    CHECK(m.data_offset() == f.data_offset());
}

TEST_CASE("a writer without checksums writes no checksum key", "[gguf]") {
    const fs::path dir = test::scratch_dir("gguf-nosum");
    const std::string path = (dir / "n.gguf").string();
    {
        Writer w(path);
        w.set_checksums(false);
        w.set_kv(std::string(kChecksumKey), Value::array(ValueType::UINT64, {Value::u64(1)}));  // dropped
        w.add_tensor("x", {5}, TypeId::F32);
        w.write_header();
        w.write_tensor_data(pattern(20, 3));
        w.finish();
    }
    const File f = File::open(path);
    CHECK_FALSE(f.has(kChecksumKey));
    CHECK(f.tensors().size() == 1);
}

TEST_CASE("an unfinished writer leaves neither the output nor its temporary file", "[gguf]") {
    const fs::path dir = test::scratch_dir("gguf-abort");
    const std::string path = (dir / "out.gguf").string();
    std::string tmp;
    SECTION("destroyed before write_header") {
        Writer w(path);
        tmp = w.temp_path();
        w.add_tensor("x", {4}, TypeId::F32);
        CHECK(fs::exists(tmp));
    }
    SECTION("destroyed mid-tensor") {
        Writer w(path);
        tmp = w.temp_path();
        w.add_tensor("x", {4}, TypeId::F32);
        w.write_header();
        w.begin_tensor();
        w.write_chunk(pattern(8, 0));
    }
    SECTION("destroyed after an error") {
        try {
            Writer w(path);
            tmp = w.temp_path();
            w.add_tensor("x", {4}, TypeId::F32);
            w.write_header();
            w.write_tensor_data(pattern(15, 0));
        } catch (const Error&) {
        }
    }
    CHECK(tmp.rfind(path + ".tmp-", 0) == 0);
    CHECK_FALSE(fs::exists(tmp));
    CHECK_FALSE(fs::exists(path));
    CHECK(files_in(dir) == 0);
}

TEST_CASE("writer misuse is an Error", "[gguf]") {
    const fs::path dir = test::scratch_dir("gguf-misuse");
    const std::string path = (dir / "m.gguf").string();
    const auto d16 = pattern(16, 1);
    SECTION("bad alignment") {
        CHECK_THROWS_WITH(Writer(path, 48), Catch::Contains("power of two"));
        CHECK_THROWS_WITH(Writer(path, 0), Catch::Contains("power of two"));
    }
    SECTION("bad tensors") {
        Writer w(path);
        CHECK_THROWS_WITH(w.add_tensor("q", {33}, TypeId::Q8_0), Catch::Contains("not a multiple of q8_0's block size 32"));
        CHECK_THROWS_WITH(w.add_tensor("s", {}, TypeId::F32), Catch::Contains("n_dims is 0"));
        CHECK_THROWS_WITH(w.add_tensor("s", {1, 1, 1, 1, 1}, TypeId::F32), Catch::Contains("n_dims is 5"));
        CHECK_THROWS_WITH(w.add_tensor("o", {1ull << 62, 4}, TypeId::F32), Catch::Contains("2^63-1"));
        CHECK_THROWS_WITH(w.add_tensor("u", {4}, static_cast<TypeId>(77)), Catch::Contains("unknown tensor type 77"));
        CHECK_THROWS_WITH(w.add_tensor("", {4}, TypeId::F32), Catch::Contains("1 to 63 bytes"));
        CHECK_THROWS_WITH(w.add_tensor(std::string(64, 'n'), {4}, TypeId::F32), Catch::Contains("1 to 63 bytes"));
        w.add_tensor("x", {4}, TypeId::F32);
        CHECK_THROWS_WITH(w.add_tensor("x", {4}, TypeId::F32), Catch::Contains("duplicate tensor name 'x'"));
    }
    SECTION("bad values") {
        Writer w(path);
        CHECK_THROWS_WITH(w.set_kv("k", Value::array(ValueType::UINT32, {Value::u32(1), Value::str("x")})),
                          Catch::Contains("array element 1 is string, expected u32"));
        CHECK_THROWS_WITH(w.set_kv("k", Value{ValueType::UINT8, uint64_t{300}}), Catch::Contains("u8 out of range"));
        CHECK_THROWS_WITH(w.set_kv("k", Value{ValueType::STRING, uint64_t{3}}), Catch::Contains("holding another kind"));
        Value deep = Value::i32s({1});
        for (int i = 0; i < 8; ++i) deep = Value::array(ValueType::ARRAY, {deep});
        CHECK_THROWS_WITH(w.set_kv("k", deep), Catch::Contains("nested deeper"));
        CHECK_THROWS_WITH(w.set_kv("general.alignment", Value::u32(64)), Catch::Contains("general.alignment"));
    }
    SECTION("data size mismatch") {
        Writer w(path);
        w.add_tensor("x", {4}, TypeId::F32);
        w.write_header();
        CHECK_THROWS_WITH(w.write_tensor_data(pattern(15, 0)), Catch::Contains("tensor 'x': 15 bytes written, expected 16"));
    }
    SECTION("too much data in chunks") {
        Writer w(path);
        w.add_tensor("x", {4}, TypeId::F32);
        w.write_header();
        w.begin_tensor();
        w.write_chunk({d16.data(), 10});
        CHECK_THROWS_WITH(w.write_chunk({d16.data(), 10}), Catch::Contains("20 bytes written, expected 16"));
    }
    SECTION("order errors") {
        Writer w(path);
        w.add_tensor("x", {4}, TypeId::F32);
        CHECK_THROWS_WITH(w.write_tensor_data(d16), Catch::Contains("before write_header"));
    }
    SECTION("more tensors than declared, and late additions") {
        Writer w(path);
        w.add_tensor("x", {4}, TypeId::F32);
        w.write_header();
        CHECK_THROWS_WITH(w.add_tensor("y", {4}, TypeId::F32), Catch::Contains("after write_header"));
        CHECK_THROWS_WITH(w.set_kv("k", Value::u8(1)), Catch::Contains("after write_header"));
        w.write_tensor_data(d16);
        CHECK_THROWS_WITH(w.write_tensor_data(d16), Catch::Contains("beyond the 1 declared tensors"));
    }
    SECTION("finish with missing tensors") {
        Writer w(path);
        w.add_tensor("x", {4}, TypeId::F32);
        w.add_tensor("y", {4}, TypeId::F32);
        w.write_header();
        w.write_tensor_data(d16);
        CHECK_THROWS_WITH(w.finish(), Catch::Contains("1 of 2 tensors written"));
    }
    SECTION("output directory missing") {
        CHECK_THROWS_WITH(Writer((dir / "no" / "such.gguf").string()), Catch::Contains("cannot create"));
    }
    CHECK_FALSE(fs::exists(path));
}

TEST_CASE("SIGINT and SIGTERM remove a live writer's temporary file", "[gguf][signals]") {
    const int sig = GENERATE(SIGINT, SIGTERM);
    const fs::path dir = test::scratch_dir("gguf-signal");
    const std::string path = (dir / "out.gguf").string();
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        install_interrupt_handler();
        install_interrupt_handler();  // idempotent
        Writer w(path);
        w.add_tensor("x", {4}, TypeId::F32);
        w.write_header();
        if (!fs::exists(w.temp_path())) _exit(2);
        std::raise(sig);
        _exit(3);  // not reached: the handler exits
    }
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 128 + sig);
    CHECK(files_in(dir) == 0);
}

TEST_CASE("the temp-file registry frees and reuses slots", "[signals]") {
    std::vector<int> slots;
    for (int i = 0; i < 70; ++i) slots.push_back(register_temp_file("/tmp/x" + std::to_string(i)));
    CHECK(slots.front() >= 0);
    CHECK(slots.back() == -1);  // table full: not registered, and not an error
    CHECK(register_temp_file(std::string(5000, 'p')) == -1);
    for (int s : slots) unregister_temp_file(s);
    {
        TempFileGuard g("/tmp/y");
        const int z = register_temp_file("/tmp/z");
        CHECK(z >= 0);
        unregister_temp_file(z);
    }
}
