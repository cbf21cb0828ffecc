// llama.cpp's prompt cache, timed as edgeds' prefix cache is (prefix_cache_llamacpp.py builds
// and runs it): the state of yesterday's prompt saved to a file once, then for each new prompt
// the time to its first token (greedy) computed in full, and from the file the way
// `llama-completion --prompt-cache FILE --prompt-cache-ro` does it: load the state, keep the
// tokens it shares with the prompt, decode the rest. The harness only calls llama.h.
//
//   prompt_cache_ttft MODEL.gguf TOKENS.txt STATE.bin THREADS
//
// TOKENS.txt: one prompt a line, token ids separated by spaces; the first is saved, the others
// asked. Prints one JSON object a line for each asked prompt.
#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using tokens_t = std::vector<llama_token>;

static double now_s() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

// Decodes `toks` from position `past` on in batches of `n_batch`; the last token's argmax.
static int decode_rest(llama_context * ctx, const tokens_t & toks, size_t past, int n_batch) {
    for (size_t at = past; at < toks.size(); at += n_batch) {
        int n = (int) std::min<size_t>(n_batch, toks.size() - at);
        llama_batch batch = llama_batch_get_one(const_cast<llama_token *>(toks.data() + at), n);
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed\n");
            exit(1);
        }
    }
    const float * logits = llama_get_logits_ith(ctx, -1);
    int vocab = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(ctx)));
    int best = 0;
    for (int i = 1; i < vocab; i++) {
        if (logits[i] > logits[best]) best = i;
    }
    return best;
}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf TOKENS.txt STATE.bin THREADS\n", argv[0]);
        return 2;
    }
    std::vector<tokens_t> prompts;
    std::ifstream in(argv[2]);
    for (std::string line; std::getline(in, line);) {
        std::istringstream ids(line);
        tokens_t t;
        for (llama_token id; ids >> id;) t.push_back(id);
        if (!t.empty()) prompts.push_back(t);
    }
    llama_backend_init();
    if (!getenv("PROMPT_CACHE_TTFT_LOG")) {
        llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    }
    llama_model_params mp = llama_model_default_params();
    // No repacked (AMX) weights: on this 2-vCPU Xeon ggml's AMX matmul faults on the 6-layer
    // model (llama-batched-bench and llama-completion too); `-nr` is the same for the tools.
    mp.use_extra_bufts = getenv("PROMPT_CACHE_TTFT_REPACK") != nullptr;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    size_t longest = 0;
    for (auto & p : prompts) longest = std::max(longest, p.size());
    cp.n_ctx = (uint32_t) longest + 16;
    cp.n_batch = cp.n_ctx;  // llama-completion's default n_batch (2048) takes a 1,600-token prompt
    cp.n_threads = cp.n_threads_batch = atoi(argv[4]);
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot make a context for %s\n", argv[1]);
        return 1;
    }
    llama_memory_t mem = llama_get_memory(ctx);
    const int n_batch = (int) cp.n_batch;

    // Yesterday's run: its prompt's state saved, as --prompt-cache does after the prompt.
    decode_rest(ctx, prompts[0], 0, n_batch);
    if (!llama_state_save_file(ctx, argv[3], prompts[0].data(), prompts[0].size())) {
        fprintf(stderr, "cannot save %s\n", argv[3]);
        return 1;
    }
    for (size_t q = 1; q < prompts.size(); q++) {
        const tokens_t & p = prompts[q];
        llama_memory_clear(mem, true);
        double t0 = now_s();
        int plain = decode_rest(ctx, p, 0, n_batch);
        double uncached = now_s() - t0;

        llama_memory_clear(mem, true);
        t0 = now_s();
        tokens_t saved(cp.n_ctx);
        size_t n_saved = 0;
        if (!llama_state_load_file(ctx, argv[3], saved.data(), saved.size(), &n_saved)) {
            fprintf(stderr, "cannot load %s\n", argv[3]);
            return 1;
        }
        size_t match = 0;
        while (match < n_saved && match < p.size() - 1 && saved[match] == p[match]) match++;
        llama_memory_seq_rm(mem, -1, (llama_pos) match, -1);  // the saved prompt's own tail
        int cached = decode_rest(ctx, p, match, n_batch);
        double from_file = now_s() - t0;
        printf("{\"prompt_tokens\": %zu, \"reused\": %zu, \"ttft_uncached_s\": %.5f, "
               "\"ttft_from_file_s\": %.5f, \"same_token\": %s}\n",
               p.size(), match, uncached, from_file, plain == cached ? "true" : "false");
        fflush(stdout);
    }
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
