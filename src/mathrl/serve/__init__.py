"""`mathrl serve`: an OpenAI-compatible HTTP server on mathrl's rollout engine.

schemas.py   request bodies (pydantic, strict, unknown fields refused), limits, ApiError
batching.py  Batcher: one worker thread takes the waiting requests, groups equal sampling
             params and runs one engine call per group
responses.py completions -> OpenAI choices: stop strings, finish reasons, log-probs
server.py    ServeState: model, tokenizer, engine, batcher, API key, load_weights
app.py       the FastAPI app: routes, body caps, the OpenAI error shape for every failure
launch.py    build_state (the model loaded as `mathrl eval --model` loads it) and run_server
"""
