// dsm-serve driven by the official `openai` npm package (run by tests/serve_openai.sh).
// Environment: DSM_NPM_DIR (where the package is installed), DSM_URL (http://host:port/v1), DSM_KEY, DSM_MODEL.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.resolve(process.env.DSM_NPM_DIR, 'package.json'));
const OpenAI = require('openai');
const client = new OpenAI({ baseURL: process.env.DSM_URL, apiKey: process.env.DSM_KEY, maxRetries: 0, timeout: 60000 });
const model = process.env.DSM_MODEL;

let failed = 0;
function check(cond, what, detail) {
	if (cond) {
		console.log(`ok: ${what}`);
	} else {
		console.log(`FAIL: ${what}${detail === undefined ? '' : ': ' + JSON.stringify(detail).slice(0, 600)}`);
		failed = 1;
	}
}
async function expectError(what, status, fn) {
	try {
		await fn();
		check(false, what, 'no error');
	} catch (e) {
		check(e instanceof OpenAI.APIError && e.status === status && e.error && typeof e.error.message === 'string',
			`${what} (${status}: ${e.error ? e.error.message : e})`, { status: e.status, error: e.error });
	}
}
const user = (text) => [{ role: 'user', content: text }];
// the tiny model is random: ignore_eos (an extension) makes every answer run to max_tokens
const greedy = { temperature: 0, ignore_eos: true };

async function chatStream(params) {
	const stream = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
	const out = { reasoning: [], content: [], finish: [], usage: null, chunks: 0, roles: 0 };
	for await (const chunk of stream) {
		out.chunks++;
		if (chunk.usage)
			out.usage = chunk.usage;
		for (const c of chunk.choices) {
			out.reasoning[c.index] = (out.reasoning[c.index] || '') + (c.delta.reasoning_content || '');
			out.content[c.index] = (out.content[c.index] || '') + (c.delta.content || '');
			if (c.delta.role === 'assistant')
				out.roles++;
			if (c.finish_reason)
				out.finish[c.index] = c.finish_reason;
		}
	}
	return out;
}

async function main() {
	const models = await client.models.list();
	check(models.data.length === 1 && models.data[0].id === model, 'models.list', models.data);

	// chat, thinking mode (the default): the text goes to reasoning_content until </think>
	const chat = await client.chat.completions.create({ model, messages: user('Prove that 1 + 1 = 2.'), max_tokens: 16, ...greedy });
	const m = chat.choices[0].message;
	check(chat.object === 'chat.completion' && chat.choices.length === 1 && chat.choices[0].finish_reason === 'length' &&
		typeof m.reasoning_content === 'string' && m.reasoning_content.length > 0 && chat.usage.completion_tokens === 16 &&
		chat.usage.prompt_tokens > 5 && chat.usage.total_tokens === chat.usage.prompt_tokens + 16, 'chat completion', chat);

	// the same request streamed: the same text, usage in the last chunk
	const st = await chatStream({ model, messages: user('Prove that 1 + 1 = 2.'), max_tokens: 16, ...greedy });
	check(st.reasoning[0] === m.reasoning_content && st.content[0] === m.content && st.finish[0] === 'length' &&
		st.roles === 1 && st.usage && st.usage.completion_tokens === 16 && st.usage.prompt_tokens === chat.usage.prompt_tokens,
		`chat streaming (${st.chunks} chunks)`, { st, m });

	// thinking off: no reasoning_content, the text is the content
	const off = await client.chat.completions.create({ model, messages: user('Prove that 1 + 1 = 2.'), max_tokens: 8, ...greedy,
		chat_template_kwargs: { thinking: false } });
	check(off.choices[0].message.reasoning_content === undefined && off.choices[0].message.content.length > 0,
		'thinking off', off.choices[0].message);

	// thinking on, reasoning not separated (SGLang's separate_reasoning: false): the raw text is the content
	const raw = await client.chat.completions.create({ model, messages: user('Prove that 1 + 1 = 2.'), max_tokens: 16, ...greedy,
		separate_reasoning: false });
	check(raw.choices[0].message.reasoning_content === undefined && raw.choices[0].message.content === m.reasoning_content,
		'separate_reasoning: false', raw.choices[0].message);

	// a conversation with a system prompt
	const conv = await client.chat.completions.create({ model, max_tokens: 4, ...greedy, messages: [
		{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' },
		{ role: 'assistant', content: 'Hello.' }, { role: 'user', content: [{ type: 'text', text: 'Prove it.' }] }] });
	check(conv.usage.prompt_tokens > chat.usage.prompt_tokens - 10 && conv.choices[0].finish_reason === 'length',
		'system prompt and several turns', conv.usage);

	// n > 1 from one prompt: reproducible from a seed, usage counts every choice
	const nreq = { model, messages: user('Count.'), max_tokens: 12, n: 3, temperature: 1, seed: 7, ignore_eos: true };
	const n1 = await client.chat.completions.create(nreq);
	const n2 = await client.chat.completions.create(nreq);
	const texts = (r) => r.choices.map((c) => c.message.reasoning_content);
	check(n1.choices.length === 3 && n1.choices.every((c, i) => c.index === i) && n1.usage.completion_tokens === 36 &&
		JSON.stringify(texts(n1)) === JSON.stringify(texts(n2)) && new Set(texts(n1)).size > 1, 'n = 3 with a seed', texts(n1));
	const ns = await chatStream(nreq);
	check(JSON.stringify(ns.reasoning) === JSON.stringify(texts(n1)) && ns.finish.length === 3 && ns.usage.completion_tokens === 36,
		'n = 3 streamed', ns.reasoning);

	// completions, plain and streamed
	const comp = await client.completions.create({ model, prompt: 'The sum of two odd numbers', max_tokens: 24, ...greedy });
	const full = comp.choices[0].text;
	check(comp.object === 'text_completion' && full.length > 0 && comp.usage.completion_tokens === 24, 'completion', comp);
	const cs = await client.completions.create({ model, prompt: 'The sum of two odd numbers', max_tokens: 24, ...greedy, stream: true });
	let streamed = '', finish = null;
	for await (const chunk of cs) {
		streamed += chunk.choices[0].text;
		finish = chunk.choices[0].finish_reason || finish;
	}
	check(streamed === full && finish === 'length', 'completion streaming', { streamed, full });

	// stop strings: cut before the first occurrence, finish_reason 'stop'
	const at = Math.floor(full.length / 2);
	const stop = full.slice(at, at + 3);
	if (stop.trim().length < 2) {
		console.log(`note: the middle of the text is white space, stop string ${JSON.stringify(stop)}`);
	}
	const cut = await client.completions.create({ model, prompt: 'The sum of two odd numbers', max_tokens: 24, ...greedy, stop: [stop, 'never seen'] });
	check(cut.choices[0].text === full.slice(0, full.indexOf(stop)) && cut.choices[0].finish_reason === 'stop',
		`stop string ${JSON.stringify(stop)}`, { cut: cut.choices[0], full });
	const cuts = await client.completions.create({ model, prompt: 'The sum of two odd numbers', max_tokens: 24, ...greedy, stop, stream: true });
	let cutStreamed = '';
	for await (const chunk of cuts)
		cutStreamed += chunk.choices[0].text;
	check(cutStreamed === cut.choices[0].text, 'stop string streamed', { cutStreamed });

	// requests decoding together
	const many = await Promise.all([...Array(6).keys()].map((i) =>
		chatStream({ model, messages: user(`Question ${i}`), max_tokens: 10 + i, ...greedy })));
	check(many.every((r, i) => r.usage.completion_tokens === 10 + i && r.finish[0] === 'length'), '6 concurrent streams',
		many.map((r) => r.usage));

	// errors: OpenAI's error object with the right status
	await expectError('unknown model', 404, () => client.chat.completions.create({ model: 'gpt-4', messages: user('Hi') }));
	await expectError('max_tokens of the wrong type', 400, () => client.chat.completions.create({ model, messages: user('Hi'), max_tokens: 'many' }));
	await expectError('max_tokens 0', 400, () => client.chat.completions.create({ model, messages: user('Hi'), max_tokens: 0 }));
	await expectError('n too large', 400, () => client.chat.completions.create({ model, messages: user('Hi'), n: 1000 }));
	await expectError('temperature out of range', 400, () => client.chat.completions.create({ model, messages: user('Hi'), temperature: 7 }));
	await expectError('no messages', 400, () => client.chat.completions.create({ model, messages: [] }));
	await expectError('an unknown role', 400, () => client.chat.completions.create({ model, messages: [{ role: 'tool', content: 'x' }] }));
	await expectError('a prompt longer than the context', 400, () => client.completions.create({ model, prompt: 'word '.repeat(5000), max_tokens: 4 }));
	await expectError('a streamed request with a bad parameter', 400, () => client.chat.completions.create({ model, messages: user('Hi'), stop: 5, stream: true }));
	const bad = new OpenAI({ baseURL: process.env.DSM_URL, apiKey: 'wrong-key', maxRetries: 0 });
	await expectError('a wrong API key', 401, () => bad.models.list());

	// the server still answers after all that
	const after = await client.chat.completions.create({ model, messages: user('Prove that 1 + 1 = 2.'), max_tokens: 16, ...greedy });
	check(after.choices[0].message.reasoning_content === m.reasoning_content, 'the same answer after the errors');
}

main().then(() => process.exit(failed), (e) => {
	console.log(`FAIL: ${e.stack || e}`);
	process.exit(1);
});
