// `ds3 convert HF_DIR -o OUT.gguf [--outtype f32|bf16|f16|MIX|TYPE] [--imatrix FILE]`: a
// Hugging Face DeepSeek release to one GGUF file. bf16 is the default: it holds FP8 and
// BF16 releases exactly at half the size of f32. A mix (Q4_K_M, ...) or quantized type is
// applied while streaming, with the same per-tensor choice (and importance matrix) as
// `ds3 quantize`.
#include <cstdio>
#include <optional>

#include "cli/command.h"
#include "convert/convert.h"
#include "quantize/imatrix.h"
#include "runtime/error.h"
#include "runtime/progress.h"
#include "runtime/signals.h"

namespace {

struct Args {
    std::string hf_dir;
    std::string out;
    std::string outtype = "bf16";
    std::string name;
    std::string imatrix;
    bool no_progress = false;
    bool no_tokenizer = false;
};

ds3::cli::Registrar reg{
    "convert", "Convert a Hugging Face DeepSeek release (FP8 or BF16 safetensors) to GGUF", [](CLI::App& sub) {
        auto a = std::make_shared<Args>();
        sub.add_option("HF_DIR", a->hf_dir, "Release directory (config.json, *.safetensors, tokenizer.json)")
            ->required();
        sub.add_option("-o,--output", a->out, "Output GGUF file")->required();
        sub.add_option("--outtype", a->outtype, "Type of the matrices: f32, bf16 (default) or f16 (norms, "
                                                "router, biases and embeddings stay f32), or a ds3 quantize TYPE "
                                                "(Q4_K_M, Q8_0, fp8, ...) quantised in the same pass");
        sub.add_option("--imatrix", a->imatrix, "Importance matrix from ds3 imatrix (quantized --outtype only; "
                                                 "the same bytes as convert then ds3 quantize --imatrix)");
        sub.add_option("--name", a->name, "general.name (default: the directory's name)");
        sub.add_flag("--no-progress", a->no_progress, "No progress bar even on a terminal");
        sub.add_flag("--no-tokenizer", a->no_tokenizer, "Leave out the tokenizer keys");
        return [a]() {
            const auto ot = ds3::hf::outtype_from_name(a->outtype);
            const auto target = ds3::quant::parse_target(a->outtype);
            if (!ot && !target)
                throw ds3::Error("convert", "--outtype '" + a->outtype + "': expected f32, bf16, f16 or " +
                                                ds3::quant::target_names());
            if (!a->imatrix.empty() && ot)
                throw ds3::Error("convert", "--imatrix needs a quantized --outtype (a mix or type such as Q4_K_M), "
                                            "not " + a->outtype);
            std::optional<ds3::quant::Imatrix> im;
            if (!a->imatrix.empty()) im = ds3::quant::Imatrix::load(a->imatrix);
            ds3::install_interrupt_handler();  // Ctrl-C removes the temporary output
            ds3::hf::ConvertOptions o;
            if (ot) o.outtype = *ot;
            else o.target = target;
            o.imatrix = im ? &*im : nullptr;
            o.imatrix_path = a->imatrix;
            o.name = a->name;
            o.progress = a->no_progress ? ds3::Progress::Mode::Off : ds3::Progress::Mode::Auto;
            o.tokenizer = !a->no_tokenizer;
            const ds3::hf::ConvertStats s = ds3::hf::convert(a->hf_dir, a->out, o);
            std::fprintf(stderr, "convert: wrote %s: %zu tensors, %s in %.1f s\n", a->out.c_str(), s.n_tensors,
                         ds3::format_bytes(double(s.bytes)).c_str(), s.seconds);
            return 0;
        };
    }};

}  // namespace
