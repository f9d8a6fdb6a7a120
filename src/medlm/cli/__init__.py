"""The console scripts, one thin module each: medlm-train, medlm-eval, medlm-generate,
medlm-prepare, medlm-export."""
