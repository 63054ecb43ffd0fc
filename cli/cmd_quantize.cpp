// `ds3 quantize IN.gguf OUT.gguf TYPE [--tensor-type REGEX=TYPE ...] [--imatrix FILE]
// [--threads N]`: requantise a deepseek2 GGUF to a mix (Q8_0, Q6_K, Q5_K_M, Q4_K_M,
// Q3_K_M, Q2_K) or a plain type (docs/quantization.md).
#include <cstdio>

#include "cli/command.h"
#include "quantize/imatrix.h"
#include "quantize/quantize_model.h"
#include "runtime/error.h"
#include "runtime/signals.h"

namespace {

struct Args {
    std::string in, out, type;
    std::vector<std::string> tensor_types;
    std::string imatrix;
    int threads = 0;
    bool no_progress = false;
    bool verbose = false;
};

ds3::cli::Registrar reg{
    "quantize", "Quantize a GGUF model to a mix (Q4_K_M, ...) or a type", [](CLI::App& sub) {
        auto a = std::make_shared<Args>();
        sub.add_option("IN", a->in, "Input GGUF (deepseek2)")->required();
        sub.add_option("OUT", a->out, "Output GGUF")->required();
        sub.add_option("TYPE", a->type, ds3::quant::target_names())->required();
        sub.add_option("--tensor-type", a->tensor_types, "REGEX=TYPE: tensors whose whole name matches get TYPE "
                                                         "(first match wins; repeatable)");
        sub.add_option("--imatrix", a->imatrix, "Importance matrix from ds3 imatrix");
        sub.add_option("-t,--threads", a->threads, "Threads (0: all)");
        sub.add_flag("--no-progress", a->no_progress, "No progress bar even on a terminal");
        sub.add_flag("-v,--verbose", a->verbose, "List every fallback");
        return [a]() {
            using namespace ds3;
            const auto target = quant::parse_target(a->type);
            if (!target) throw Error("quantize", "unknown TYPE '" + a->type + "' (" + quant::target_names() + ")");
            quant::TypeOverrides ov;
            for (const std::string& s : a->tensor_types) ov.add(s);
            std::optional<quant::Imatrix> im;
            if (!a->imatrix.empty()) im = quant::Imatrix::load(a->imatrix);
            install_interrupt_handler();  // Ctrl-C removes the temporary output
            quant::QuantizeOptions o;
            o.target = *target;
            o.overrides = &ov;
            o.imatrix = im ? &*im : nullptr;
            o.imatrix_path = a->imatrix;
            o.n_threads = a->threads;
            o.progress = a->no_progress ? Progress::Mode::Off : Progress::Mode::Auto;
            const quant::QuantizeStats s = quant::quantize_model(a->in, a->out, o);
            if (a->verbose)
                for (const std::string& n : s.notes) std::fprintf(stderr, "quantize: %s\n", n.c_str());
            std::fprintf(stderr,
                         "quantize: wrote %s (%s): %zu tensors, %s -> %s (%.2f bits/weight), %zu fallbacks, %.1f s\n",
                         a->out.c_str(), target->name.c_str(), s.n_tensors, format_bytes(double(s.bytes_in)).c_str(),
                         format_bytes(double(s.bytes_out)).c_str(),
                         s.n_weights ? 8.0 * double(s.bytes_out) / double(s.n_weights) : 0.0, s.n_fallback, s.seconds);
            return 0;
        };
    }};

}  // namespace
