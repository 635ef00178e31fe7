// Expected token ids from @lenml/tokenizers, an independent JavaScript implementation of the Hugging Face
// tokenizers (a port of transformers.js), for the exactness test.
//
// usage: node expected_ids.cjs NODE_PREFIX TOKENIZER_JSON TOKENIZER_CONFIG_JSON TEXT_FILE lines|whole
//   lines: one output line of ids per input line ("\n" separated, the newline not encoded, no BOS)
//   whole: the ids of the whole file on one line, with BOS first when the config's add_bos_token is true
//          (the JavaScript ByteLevel post-processor adds nothing; the Python tokenizer class adds BOS).
"use strict";
const fs = require("fs");
const path = require("path");

const [prefix, tokenizerPath, configPath, textPath, mode] = process.argv.slice(2);
if (!mode || (mode !== "lines" && mode !== "whole")) {
	console.error("usage: node expected_ids.cjs NODE_PREFIX TOKENIZER_JSON CONFIG_JSON TEXT_FILE lines|whole");
	process.exit(2);
}
const { TokenizerLoader } = require(path.resolve(prefix, "node_modules", "@lenml", "tokenizers"));
const tokenizerJSON = JSON.parse(fs.readFileSync(tokenizerPath, "utf8"));
const tokenizerConfig = JSON.parse(fs.readFileSync(configPath, "utf8"));
const tok = TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });
const text = fs.readFileSync(textPath, "utf8");
const encode = (s) => tok.encode(s, { add_special_tokens: false });

const out = [];
if (mode === "lines") {
	const lines = text.split("\n");
	if (lines.length && lines[lines.length - 1] === "") lines.pop();
	for (const line of lines) out.push(encode(line).join(" "));
} else {
	const ids = encode(text);
	if (tokenizerConfig.add_bos_token) ids.unshift(tok.bos_token_id);
	out.push(ids.join(" "));
}
fs.writeSync(1, out.join("\n") + "\n");
