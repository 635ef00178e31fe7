// Token ids from the npm package `tokenizers`: Hugging Face's own Rust implementation (prebuilt native
// binding). Optional second reference, used to give evidence for documented exceptions: same arguments
// and output as expected_ids.cjs.
"use strict";
const fs = require("fs");
const path = require("path");

const [prefix, tokenizerPath, configPath, textPath, mode] = process.argv.slice(2);
const { Tokenizer } = require(path.resolve(prefix, "node_modules", "tokenizers"));
const config = JSON.parse(fs.readFileSync(configPath, "utf8"));
const tok = Tokenizer.fromFile(tokenizerPath);
const text = fs.readFileSync(textPath, "utf8");

(async () => {
	const out = [];
	if (mode === "lines") {
		const lines = text.split("\n");
		if (lines.length && lines[lines.length - 1] === "") lines.pop();
		for (const line of lines) {
			const e = await tok.encode(line, null, { addSpecialTokens: false });
			out.push(e.getIds().join(" "));
		}
	} else {
		const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
		if (config.add_bos_token) ids.unshift(tok.tokenToId(typeof config.bos_token === "string" ? config.bos_token : config.bos_token.content));
		out.push(ids.join(" "));
	}
	fs.writeSync(1, out.join("\n") + "\n");
})();
