// The JavaScript side of dsm-bench tokenizer: encodes a text file with @lenml/tokenizers and prints
// "runs MB/s MB/s ... ids N" (one run per argument RUNS, the text encoded in one call each time).
//
// usage: node bench.cjs NODE_PREFIX TOKENIZER_JSON CONFIG_JSON TEXT_FILE RUNS
"use strict";
const fs = require("fs");
const path = require("path");

const [prefix, tokenizerPath, configPath, textPath, runsArg] = process.argv.slice(2);
const { TokenizerLoader } = require(path.resolve(prefix, "node_modules", "@lenml", "tokenizers"));
const tok = TokenizerLoader.fromPreTrained({
	tokenizerJSON: JSON.parse(fs.readFileSync(tokenizerPath, "utf8")),
	tokenizerConfig: JSON.parse(fs.readFileSync(configPath, "utf8")),
});
const bytes = fs.readFileSync(textPath);
const text = bytes.toString("utf8");
const rates = [];
let n = 0;
for (let r = 0; r < Number(runsArg || 3); r++) {
	const t0 = process.hrtime.bigint();
	n = tok.encode(text, { add_special_tokens: false }).length;
	const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
	rates.push((bytes.length / 1e6 / seconds).toFixed(3));
}
console.log("runs " + rates.join(" ") + " ids " + n);
