#!/usr/bin/env python3
"""Writes corpus.txt, the text of the tokenizer exactness test (run: python3 gen_corpus.py > corpus.txt).

Hand-written lines of each kind the tokenizer must get right (LaTeX mathematics, Unicode mathematics,
Japanese, Chinese, Korean, Arabic, Hebrew, emoji and ZWJ sequences, combining marks, digit runs, tabs and
runs of spaces, code, the special token strings inside text), then lines composed from them with a
fixed seed, so that the file is reproducible. The output is committed; rerunning gives the same bytes."""
import random
import sys

R = random.Random(20250101)
lines = []


def add(*xs):
    for x in xs:
        lines.extend(x.split("\n") if isinstance(x, str) else x)


# ---- LaTeX-heavy mathematics -------------------------------------------------------------------------
latex = r"""Let $n \geq 2$ be an integer and let $a_1, a_2, \ldots, a_n$ be positive real numbers.
Prove that $\sum_{i=1}^{n} \frac{a_i^2}{a_{i+1}} \geq \sum_{i=1}^{n} a_i$, where $a_{n+1} = a_1$.
\begin{theorem}[Cauchy--Schwarz] For all $x, y \in \mathbb{R}^n$ we have $|\langle x, y \rangle| \le \|x\| \, \|y\|$.\end{theorem}
\begin{proof}
Consider the quadratic $q(t) = \|x + t y\|^2 = \|x\|^2 + 2t\langle x,y\rangle + t^2\|y\|^2 \geq 0$.
Its discriminant is non-positive, hence $4\langle x,y\rangle^2 - 4\|x\|^2\|y\|^2 \le 0$. \qedhere
\end{proof}
$$\int_0^{\infty} e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2}.$$
\[ \zeta(s) = \sum_{n=1}^{\infty} \frac{1}{n^s} = \prod_{p \text{ prime}} \frac{1}{1 - p^{-s}}, \quad \Re(s) > 1. \]
\begin{align*}
  (a+b)^2 &= a^2 + 2ab + b^2 \\
  (a-b)^2 &= a^2 - 2ab + b^2 \\
  a^2 - b^2 &= (a-b)(a+b).
\end{align*}
By AM-GM, $\frac{x+y+z}{3} \ge \sqrt[3]{xyz}$ with equality iff $x=y=z$.
The answer is $\boxed{2025}$.
Hence the final score is \boxed{1}.
We conclude that $f(x) = x$ for all $x \in \mathbb{Q}_{>0}$, i.e.\ $\boxed{f(x)=x}$.
\newcommand{\R}{\mathbb{R}}\newcommand{\abs}[1]{\left|#1\right|}
\DeclareMathOperator{\lcm}{lcm} \DeclareMathOperator*{\argmax}{arg\,max}
Let $\varphi: G \to H$ be a group homomorphism; then $\ker\varphi \trianglelefteq G$ and $G/\ker\varphi \cong \operatorname{im}\varphi$.
\textbf{Lemma 2.} If $p \mid ab$ and $p \nmid a$ then $p \mid b$.
\emph{Proof.} Since $\gcd(p, a) = 1$, there exist $u, v \in \mathbb{Z}$ with $up + va = 1$, so $b = upb + vab$.
$\lim_{x \to 0} \frac{\sin x}{x} = 1$ and $\lim_{n\to\infty}\left(1+\frac{1}{n}\right)^n = e$.
\frac{\partial^2 u}{\partial t^2} = c^2 \nabla^2 u, \qquad u(x,0) = f(x), \quad u_t(x,0) = g(x).
\mathbf{A}\mathbf{x} = \mathbf{b}, \quad \det(\mathbf{A} - \lambda \mathbf{I}) = 0
\binom{n}{k} = \frac{n!}{k!\,(n-k)!} = \binom{n-1}{k-1} + \binom{n-1}{k}
\left\lfloor \frac{n}{2} \right\rfloor + \left\lceil \frac{n}{2} \right\rceil = n
\sum_{k=0}^{n} \binom{n}{k} x^k y^{n-k} = (x+y)^n
\oint_{\partial \Omega} \omega = \int_{\Omega} d\omega
\mathcal{L}\{f\}(s) = \int_0^\infty f(t) e^{-st}\, dt
f^{(n)}(x_0) = \frac{n!}{2\pi i} \oint_\gamma \frac{f(z)}{(z - x_0)^{n+1}}\,dz
\text{Let } \mathcal{F} \text{ be a } \sigma\text{-algebra on } \Omega.
\forall \varepsilon > 0\ \exists \delta > 0 : |x - y| < \delta \implies |f(x) - f(y)| < \varepsilon
a \equiv b \pmod{m} \iff m \mid a - b
\begin{pmatrix} 1 & 2 \\ 3 & 4 \end{pmatrix}^{-1} = -\frac{1}{2}\begin{pmatrix} 4 & -2 \\ -3 & 1 \end{pmatrix}
\begin{cases} x + y = 10 \\ x - y = 4 \end{cases} \Rightarrow (x, y) = (7, 3)
\overline{z_1 z_2} = \overline{z_1}\,\overline{z_2}, \quad |z|^2 = z\bar{z}
\hat{f}(\xi) = \int_{-\infty}^{\infty} f(x)\, e^{-2\pi i x \xi}\, dx
\mathbb{E}[X] = \sum_{x} x\,\Pr[X = x], \quad \operatorname{Var}(X) = \mathbb{E}[X^2] - \mathbb{E}[X]^2
\triangle ABC \sim \triangle DEF, \quad \angle BAC = 60^\circ, \quad AB = AC
\vec{u} \times \vec{v} = \|\vec{u}\|\|\vec{v}\|\sin\theta\,\hat{n}
\sqrt{2} \notin \mathbb{Q}: \text{suppose } \sqrt{2} = p/q \text{ in lowest terms}\ldots
% this is a LaTeX comment with 100% certainty
\section{Introduction}\label{sec:intro} See Section~\ref{sec:main} and \cite{knuth1984}.
\item[(a)] $x^2 \equiv -1 \pmod p$ is solvable iff $p = 2$ or $p \equiv 1 \pmod 4$;
\usepackage{amsmath,amssymb,amsthm}\usepackage[utf8]{inputenc}
\documentclass[11pt,a4paper]{article}
$a_{ij}^{(k+1)} = a_{ij}^{(k)} - \frac{a_{ik}^{(k)} a_{kj}^{(k)}}{a_{kk}^{(k)}}$
$\{x \in \mathbb{R} : x^2 < 2\}$ has no maximum in $\mathbb{Q}$ but $\sup = \sqrt{2}$.
$$P(A \mid B) = \frac{P(B \mid A)\,P(A)}{P(B)}$$
\(\displaystyle \prod_{k=1}^{\infty}\left(1 - \frac{x^2}{k^2\pi^2}\right) = \frac{\sin x}{x}\)
$2^{10} = 1024$, $2^{20} = 1048576$, $2^{32} = 4294967296$.
$\gcd(2^{a}-1, 2^{b}-1) = 2^{\gcd(a,b)} - 1$
$x_{n+1} = x_n - \frac{f(x_n)}{f'(x_n)}$ (Newton's method)
$$\left\{\begin{array}{ll} 0 & \text{if } x < 0,\\ 1 & \text{otherwise.}\end{array}\right.$$
\mathrm{d}s^2 = -c^2\mathrm{d}t^2 + \mathrm{d}x^2 + \mathrm{d}y^2 + \mathrm{d}z^2
{{a}^{b}}_{c} {}^{14}\mathrm{C} \,\,\, \;\;\; \quad\qquad \! \! \!
\textit{i.e.}, \textsc{QED}, \texttt{verbatim\_text}, \underline{under}, \overbrace{1+\dots+1}^{n}
## Solution
## Self Evaluation
**Solution.** Let $S = \{1, 2, \ldots, 2n\}$.
Here is my evaluation of the solution: the argument is complete and rigorous. Score: \boxed{1}
The proof has a minor gap in the case $n = 1$, which is easy to fix. \boxed{0.5}
The key step (Claim 3) is false: take $x = -1$. Therefore \boxed{0}."""
add(latex)

# ---- Unicode mathematics ------------------------------------------------------------------------------
umath = """∀ε>0 ∃δ>0: |x−y|<δ ⇒ |f(x)−f(y)|<ε
∑_{i=1}^{n} i² = n(n+1)(2n+1)/6
∫₀¹ x² dx = ⅓, ∫∫_D f dA, ∮_C F·dr
ℕ ⊂ ℤ ⊂ ℚ ⊂ ℝ ⊂ ℂ, and ℍ, 𝔽_p, 𝔽_{p^k}
A ∪ B, A ∩ B, A ∖ B, A △ B, ∅, 𝒫(A), |A × B| = |A|·|B|
x ∈ S ⟺ x ∉ Sᶜ; ¬(p ∧ q) ≡ ¬p ∨ ¬q
√2 ≈ 1.41421356, ∛27 = 3, ∜16 = 2, π ≈ 3.14159, e ≈ 2.71828
≤ ≥ ≠ ≈ ≡ ≅ ∼ ∝ ≪ ≫ ⊆ ⊇ ⊊ ⊋ ∈ ∋ ∉ ⊥ ∥ ∠ ∡ °
→ ← ↔ ⇒ ⇐ ⇔ ↦ ↪ ↠ ⟶ ⟹ ⟸ ↑ ↓ ⤴
∂f/∂x, ∇·F, ∇×F, Δu = 0, ∞, ℵ₀, 𝔠 = 2^ℵ₀
⟨u, v⟩ = ‖u‖‖v‖cos θ, ⌊x⌋ + ⌈x⌉, ⌊√n⌋
f: ℝ → ℝ, x ↦ x³ − 3x + 1
𝐀𝐱 = 𝐛, 𝑓(𝑥) = 𝑒^{𝑥}, 𝒜, ℬ, 𝒞, 𝔄𝔅ℭ, 𝕂, 𝟘𝟙𝟚𝟛
α β γ δ ε ζ η θ ι κ λ μ ν ξ ο π ρ σ τ υ φ χ ψ ω
Α Β Γ Δ Ε Ζ Η Θ Ι Κ Λ Μ Ν Ξ Ο Π Ρ Σ Τ Υ Φ Χ Ψ Ω ϑ ϕ ϖ ϱ ϵ
x⁰ x¹ x² x³ x⁴ x⁵ x⁶ x⁷ x⁸ x⁹ x⁺ x⁻ xⁿ; a₀ a₁ a₂ a₃ a₁₀ a₁₂₃₄
½ ⅓ ⅔ ¼ ¾ ⅕ ⅙ ⅛ ⅞ ↉ — vulgar fractions are numbers too
Ⅰ Ⅱ Ⅲ Ⅳ Ⅴ Ⅵ Ⅶ Ⅷ Ⅸ Ⅹ Ⅺ Ⅻ ⅰ ⅱ ⅲ ⅳ; Chapter Ⅻ begins
① ② ③ ④ ⑤ ⑩ ⑳ ㉑ ㊿ ⑴ ⒈ 🄀 🄁
０１２３４５６７８９ full-width digits: ２０２５年 and ＡＢＣ ａｂｃ ！？
٠١٢٣٤٥٦٧٨٩ Arabic-Indic, ۰۱۲۳ Persian, ०१२३४५ Devanagari, ০১২৩ Bengali, ๐๑๒๓ Thai
the sum 1 + 2 + ⋯ + n = n(n+1)/2 and the dots … ⋮ ⋱ ⋰
∏_{p≤x} (1 − 1/p)⁻¹ ~ e^γ log x (Mertens)
det(A) = ∑_{σ∈Sₙ} sgn(σ) ∏ᵢ a_{i,σ(i)}
ℓ², ℓ^∞, L¹(μ), ‖f‖_∞ = ess sup |f|
⊕ ⊗ ⊙ ⊖ ⊘ ⊚ ∘ ∙ ⋅ × ÷ ± ∓ ∔ ∸ ⨁ ⨂ ⨀
∎ □ ■ ∴ ∵ ∷ ∶ ∹ ≝ ≟ ≜
The symbols ℏ, ℓ, ℘, ℑ, ℜ, ℵ, ℶ, ⅅ, ⅆ, ⅇ, ⅈ, ⅉ appear in physics and analysis.
⟦x⟧, ⟪a, b⟫, ⟮ ⟯, ⦃ ⦄, ⌈ ⌉, ⌊ ⌋, ⎡ ⎤, ⎣ ⎦
∫_{−∞}^{+∞} e^{−x²/2} dx = √(2π)
lim_{n→∞} (1 + 1/n)ⁿ = e, and ∑_{k≥0} xᵏ/k! = eˣ
𝛼𝛽𝛾 𝜶𝜷𝜸 𝝰𝝱𝝲 — mathematical italic, bold italic, sans-serif bold Greek
P ⊢ Q, ⊨ φ, □p → p, ◇p, ⊤, ⊥, ∀x∃y R(x,y)
ζ(2) = π²/6 ≈ 1.6449340668482264
𝑎² + 𝑏² = 𝑐², 𝑥ₙ₊₁ = 𝑥ₙ − 𝑓(𝑥ₙ)/𝑓′(𝑥ₙ)
f′(x), f″(x), f‴(x), x′ = 2, angle 45°30′15″"""
add(umath)

# ---- Japanese -------------------------------------------------------------------------------------------------
japanese = """数学は科学の女王であり、数論は数学の女王である。
任意の正の整数 n に対して、n² + n は偶数であることを証明せよ。
【証明】n(n+1) は連続する二つの整数の積なので、どちらか一方は必ず偶数である。よって題意は示された。
三角形ABCにおいて、∠A = 90° ならば BC² = AB² + AC² が成り立つ（ピタゴラスの定理）。
関数 f(x) = x³ − 3x の極値を求めよ。
ひらがなだけのぶん：きょうはいいてんきですね。
カタカナダケノブン：コンピューター、プログラミング、アルゴリズム、データベース。
ﾊﾝｶｸｶﾀｶﾅ ﾃﾞ ｶｲﾀ ﾌﾞﾝ ｼｮｳ ﾃﾞｽ｡ ｱｲｳｴｵ
東京は日本の首都です。人口は約1400万人です。
「こんにちは」と彼は言った。『本当に？』と私は答えた。
私はプログラマーです。毎日Pythonとｃ言語でコードを書いています。
この問題の答えは42です。なぜなら、6 × 7 = 42 だからです。
漸化式 aₙ₊₁ = 2aₙ + 1、a₁ = 1 を解け。答：aₙ = 2ⁿ − 1。
確率変数 X が正規分布 N(μ, σ²) に従うとき、E[X] = μ である。
ゝゞヽヾ々〆〇ー〜・、。〃「」『』【】〔〕（）［］｛｝〈〉《》
行列式の計算は次のように行う：det(A) = ad − bc。
令和7年（2025年）4月1日 午前9時30分
日本語の文章には、漢字・ひらがな・カタカナが混在します。
全角スペース　を含む　文章です。
ソフトウェアエンジニアリング　ベストプラクティス
微分積分学の基本定理により、∫ₐᵇ f′(x) dx = f(b) − f(a)。
素数は無限に存在する（ユークリッド）。
ユークリッドの互除法で gcd(252, 105) = 21 を求める。
彼女は「数学オリンピック」で金メダルを取った。
ｱｲｳｴｵｶｷｸｹｺｻｼｽｾｿﾀﾁﾂﾃﾄ
㍻㍼㍽㍾ ㌔㌘㌢ ㍉ ㎏ ㎞ ㏄
集合 A = {1, 2, 3} の部分集合の個数は 2³ = 8 個である。
この定理の証明は長いので、付録Bに回す。
ヴァイオリンとヴィオラ、ヴェルサイユ、ヴォルテール
きゃきゅきょ しゃしゅしょ ちゃちゅちょ っ ッ ゎ ヮ ゕ ゖ"""
add(japanese)

# ---- Chinese --------------------------------------------------------------------------------------------------
chinese = """设 n 为正整数，证明：1 + 2 + ⋯ + n = n(n+1)/2。
证明：用数学归纳法。当 n = 1 时，结论显然成立。假设结论对 n = k 成立，则对 n = k + 1 也成立。
已知函数 f(x) = x² − 2x + 3，求 f(x) 在区间 [0, 3] 上的最大值与最小值。
在三角形 ABC 中，若 a = 3，b = 4，C = 90°，求 c 的长度。
数学是研究数量、结构、变化以及空间等概念的一门学科。
中华人民共和国成立于1949年10月1日。
我们今天学习了二次函数的图像与性质。
繁體中文：數學是研究數量、結構、變化以及空間等概念的一門學科。
臺灣、香港、澳門使用繁體字。
這個問題的答案是：沒有這樣的整數解。
他说：“这道题很难。”我回答：‘是的，但可以做。’
《九章算术》是中国古代第一部数学专著。
勾股定理：勾三股四弦五。
圆周率π约等于3.1415926，祖冲之将其精确到小数点后七位。
例题1：解方程 x² − 5x + 6 = 0。解：(x − 2)(x − 3) = 0，所以 x = 2 或 x = 3。
，。！？；：、（）【】《》“”‘’——……·
龥龦龧龨鿀鿋鿿 — CJK characters just past the 一-龥 range
㐀㐁㐂 𠀀𠀁𠀂 𪚥 𰻞𰻞面 — Extension A and B ideographs
拼音：shù xué（数学），zhōng wén（中文），lǜ sè（绿色）
第一章 集合与函数概念 第二节 函数的单调性
若 a > 0 且 a ≠ 1，则 log_a(MN) = log_a M + log_a N。
向量 a = (1, 2)，b = (3, −1)，则 a · b = 1。
概率论与数理统计 线性代数 常微分方程 复变函数 实变函数 泛函分析
这是一个很长的句子用来测试分词器在没有标点符号的情况下如何处理连续的中文字符序列以及它们之间的合并规则
中文English混合text测试123数字456结束
二〇二五年 零一二三四五六七八九十百千万亿
北京大学 清华大学 复旦大学 浙江大学 南京大学
注：本题满分12分，其中第(1)问4分，第(2)问8分。"""
add(chinese)

# ---- Korean ----------------------------------------------------------------------------------------------------
korean = """수학은 과학의 여왕이다.
모든 양의 정수 n에 대하여 n³ − n은 6의 배수임을 증명하시오.
증명: n³ − n = (n − 1)n(n + 1)은 연속한 세 정수의 곱이므로 6으로 나누어떨어진다.
안녕하세요! 오늘 날씨가 정말 좋네요.
대한민국의 수도는 서울입니다.
삼각형의 내각의 합은 180°이다.
함수 f(x) = 2x + 1의 역함수를 구하여라.
ㄱㄴㄷㄹㅁㅂㅅㅇㅈㅊㅋㅌㅍㅎ ㅏㅑㅓㅕㅗㅛㅜㅠㅡㅣ
각 ᄒᆞᆫ — conjoining jamo sequences
한국어와 English를 섞어서 쓴 문장입니다. 123개의 사과.
“이 문제는 어렵다”라고 그는 말했다.
미적분학의 기본 정리에 의해 적분과 미분은 역연산이다.
ㅋㅋㅋㅋㅋ ㅎㅎㅎ ㅠㅠ
서울특별시 종로구 세종대로 209
행렬 A의 고윳값을 λ라 하면 det(A − λI) = 0이다.
갑을병정무기경신임계 가나다라마바사아자차카타파하"""
add(korean)

# ---- Arabic, Hebrew and other right-to-left text -------------------------------------------------------------
rtl = """الرياضيات هي ملكة العلوم.
أثبت أن مجموع زوايا المثلث يساوي ١٨٠ درجة.
بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ
العدد ٣٬١٤١٥٩ قريب من π، والعدد ٢٫٧١٨ قريب من e.
الجبر كلمة عربية الأصل، من كتاب الخوارزمي «الكتاب المختصر في حساب الجبر والمقابلة».
مرحبا بالعالم! كيف حالك؟
اللغة العربية تكتب من اليمين إلى اليسار، أما الأرقام 123 فتكتب من اليسار إلى اليمين.
ریاضیات در زبان فارسی: مجموع ۱ تا ۱۰ برابر ۵۵ است.
اردو: ریاضی ایک سائنس ہے۔
עברית: מתמטיקה היא מלכת המדעים.
שָׁלוֹם עוֹלָם — Hebrew with niqqud
משפט פיתגורס: a² + b² = c²
‏RTL mark here‏ and ‎LTR mark here‎, embedding ‫abc‬ and isolate ⁧xyz⁩
ـــــ تطويل ـــــ
ﷺ ﷽ ﻻ ﻷ — Arabic presentation forms"""
add(rtl)

# ---- emoji -----------------------------------------------------------------------------------------------------------
emoji = """I love math 😍📐📊 and coffee ☕️!
Family: 👨‍👩‍👧‍👦 👩‍👩‍👦 👨‍👨‍👧‍👧, couple: 👩‍❤️‍👨 💏, kiss: 👩‍❤️‍💋‍👩
Professions: 👩‍🔬 👨‍💻 👩‍🏫 🧑‍🚀 👨‍⚕️ 👩‍⚖️ 🧑‍🍳
Skin tones: 👋🏻 👋🏼 👋🏽 👋🏾 👋🏿 🧑🏽‍💻 👩🏿‍🔬
Flags: 🇯🇵 🇨🇳 🇰🇷 🇺🇸 🇫🇷 🇩🇪 🇸🇦 🇮🇱 🏳️‍🌈 🏴‍☠️ 🏴󠁧󠁢󠁳󠁣󠁴󠁿
Keycaps: 0️⃣ 1️⃣ 2️⃣ 3️⃣ #️⃣ *️⃣ 🔟
Hearts: ❤️ 🧡 💛 💚 💙 💜 🖤 🤍 🤎 ❤️‍🔥 ❤️‍🩹
✅ Done ❌ Failed ⚠️ Warning ℹ️ Info 🚀 Launch 🎉 Party
🤔💭 Hmm... 🤯 mind blown 🙏 thanks 👍👍👍
The proof is complete ∎ 🎓
Emoji presentation: ☺ vs ☺️, ✌ vs ✌️, ⬆ vs ⬆️
😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗☺️😚😙🥲😋😛😜🤪😝🤑🤗🤭🫢🫣🤫
🐶🐱🐭🐹🐰🦊🐻🐼🐻‍❄️🐨🐯🦁🐮🐷🐸🐵🙈🙉🙊
🍎🍐🍊🍋🍌🍉🍇🍓🫐🍈🍒🍑🥭🍍🥥🥝
Math emoji: ➕ ➖ ✖️ ➗ 🟰 ♾️ 💯 🔢 🔣
🫠 melting face, 🫡 saluting face, 🫶 heart hands (Emoji 14)
Text with emoji in the middle:the🙂word and numbers 1🙂2🙂3
🧮 abacus 📏 ruler 📐 triangle ruler 🔭 telescope 🔬 microscope"""
add(emoji)

# ---- combining marks -------------------------------------------------------------------------------------------
combining = """café vs café (precomposed vs e + U+0301)
naïve, coöperate, Zoë, Brontë, résumé, über, Ångström, Øresund
Tiếng Việt có nhiều dấu: à á ả ã ạ ă ằ ắ ẳ ẵ ặ â ầ ấ ẩ ẫ ậ
Tiếng Việt với dấu kết hợp: à á ả ã ạ
Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇ text is ̸̡̛̗̥̖̳̰̫̅̐̀̈̓ͅc̷u̷r̷s̷e̷d̷
x̄ ȳ ż x⃗ v⃗ a⃑ 0⃝ 1⃣ — combining overline, arrows and enclosing marks
̀leading combining grave accent at the start of a line
 ́ a space followed by a combining acute accent
हिन्दी में गणित: संख्या, समीकरण, प्रमेय।
தமிழ் மொழி கணிதம்
ภาษาไทย: คณิตศาสตร์เป็นวิชาที่น่าสนใจ ๑๒๓
ສະບາຍດີ ພາສາລາວ
ᜊᜌ᜔ᜊᜌᜒᜈ᜔ Baybayin, ᠮᠣᠩᠭᠣᠯ Mongolian, ᏣᎳᎩ Cherokee
Ελληνικά: Ἀρχιμήδης, Εὐκλείδης, Πυθαγόρας, ἄλγεβρα
Русский: теорема Пифагора, ёлка, й, щука; Українська: ґанок, їжак, є
Српски: Ђорђе; Български: Ъъ; Қазақша: ғ, қ, ң, ү, ұ, һ, ә, і, ө
Polski: zażółć gęślą jaźń; Čeština: příliš žluťoučký kůň úpěl ďábelské ódy
Türkçe: İstanbul, ığdır, ŞEKER; Deutsch: Straße, ẞ; Íslenska: þorn, eð
n̈ ñ ñ (n + U+0303) and ǹ, e͡t, a͜b, o̲u̲t̲, s̶t̶r̶i̶k̶e̶
Ａ̈ 가̀ 字̃ ؈̈ 1̈ 2̃ — marks on letters of every script and on digits
Dia­critics with a soft hyphen: co­operate, in­divisible
zero​width​space and zero‌width‌non‌joiner and word⁠joiner"""
add(combining)

# ---- digits ---------------------------------------------------------------------------------------------------------
digits = """3.14159265358979323846264338327950288419716939937510582097494459230781640628620899862803482534211706798214808651
2.71828182845904523536028747135266249775724709369995957496696762772407663035354759457138217852516642742746
2^64 = 18446744073709551616 and 2^128 = 340282366920938463463374607431768211456
1000000007 is prime; so is 998244353 = 119 * 2^23 + 1.
Phone: +1 (555) 123-4567, +81-3-1234-5678, +86 138 0013 8000
ISBN 978-3-16-148410-0, UUID 123e4567-e89b-12d3-a456-426614174000
1,234,567.89 and 1.234.567,89 and 1 234 567,89 and 12,34,567.00
0.000000001 1e-9 6.022e23 6.02214076×10²³ 1.602176634e−19
01234 0x1F 0b1010 0o777 007 000000 0.0 -0 +0
999999999999999999999999999999999999999999999999999999999999
12345678901234567890123456789012345678901234567890123456789012345678901234567890
31415 92653 58979 32384 62643 38327 95028 84197 16939 93751
Fibonacci: 1 1 2 3 5 8 13 21 34 55 89 144 233 377 610 987 1597 2584 4181 6765 10946
Primes: 2 3 5 7 11 13 17 19 23 29 31 37 41 43 47 53 59 61 67 71 73 79 83 89 97 101 103
Dates: 2025-01-31, 31/01/2025, 01.31.2025, 20250131T235959Z, 12:34:56.789
Versions: v1.2.3, 10.0.19045.3693, 3.11.4rc1, 2.0.0-beta.17+exp.sha.5114f85
IPv4 192.168.100.200, IPv6 2001:0db8:85a3:0000:0000:8a2e:0370:7334
a1b2c3d4e5 x86_64 i386 arm64 utf8 sha256 md5 ipv6 h264 mp3 3D 4K 5G
123abc abc123 12ab34cd 1st 2nd 3rd 4th 21st 100th
The year 1729 = 1³ + 12³ = 9³ + 10³ (Hardy–Ramanujan).
7777777 88888888 999999999 1111111111 22222222222 333333333333"""
add(digits)

# ---- tabs, spaces, and other white space ---------------------------------------------------------------------------
spaces = ["\tone leading tab", "\t\ttwo leading tabs", "\t\t\tthree tabs\tand\ttabs\tbetween",
          "trailing tab\t", "trailing spaces   ", "  two leading spaces", "    four leading spaces",
          "        eight leading spaces (code indentation)", "a  b   c    d     e      f       g",
          "word\t \t mixed \t\t white   \t space", " ", "  ", "    ", "\t", " \t ", "\t \t",
          "x" + " " * 17 + "y" + " " * 33 + "z", "end with many spaces" + " " * 25,
          "non\u00a0breaking\u00a0space and\u00a0\u00a0double", "ideographic\u3000space\u3000\u3000here",
          "thin\u2009space, hair\u200aspace, en\u2002space, em\u2003space, figure\u2007space",
          "narrow\u202fno-break and medium\u205fmathematical space",
          "line\u2028separator and paragraph\u2029separator inside a line",
          "vertical\x0btab and form\x0cfeed characters", "carriage\rreturn in the middle",
          "crlf line ending\r", "\r", "tab\t\t\t\t\t\t\t\t\t\t\t\tmany tabs", "control \x01\x02\x1b[31mred\x1b[0m \x7f chars",
          "   \t   \t   ", "Ogham\u1680space mark", " . , ; : ! ? ", "  (  )  [  ]  {  }  "]
add(spaces)

# ---- code ------------------------------------------------------------------------------------------------------------
code = r'''#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; ++i) printf("%d: %s\n", i, argv[i]);
    return 0;
}
static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
#define MAX(a, b) ((a) > (b) ? (a) : (b))
	if (ptr == NULL) { errno = ENOMEM; return -1; }
/* block comment */ // line comment
def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
print(f"{fib(100)=}")  # 354224848179261915075
import numpy as np; x = np.linspace(0, 2 * np.pi, 1000); y = np.sin(x) ** 2
lambda x: x**2 + 2*x + 1
[x for x in range(100) if x % 3 == 0 and x % 5 != 0]
{"name": "dsm", "version": "0.1.0", "tags": ["math", "proof"], "nested": {"a": [1, 2, {"b": null}]}}
fn main() { let v: Vec<u32> = (1..=10).map(|x| x * x).collect(); println!("{:?}", v); }
impl<T: Ord + Clone> Solver<T> where T: std::fmt::Debug { pub fn solve(&mut self) -> Result<(), Box<dyn Error>> { Ok(()) } }
const add = (a, b) => a + b; console.log(`sum = ${add(2, 3)}`);
document.querySelectorAll('div.proof > p:first-child').forEach(el => el.classList.add('lemma'));
SELECT id, name, COUNT(*) AS n FROM problems WHERE score >= 0.5 GROUP BY id ORDER BY n DESC LIMIT 10;
$ ./configure --enable-sanitizers && make -j2 && make check
grep -rn 'TODO\|FIXME' src/ | wc -l; find . -name '*.c' -exec wc -l {} +
<html><head><meta charset="utf-8"><title>Proof</title></head><body><p class="x">Hi &amp; bye</p></body></html>
theorem add_comm (a b : ℕ) : a + b = b + a := by
  induction a with
  | zero => simp
  | succ n ih => omega
lemma sq_nonneg (x : ℝ) : 0 ≤ x ^ 2 := by positivity
example : ∀ n : ℕ, n + 0 = n := fun n => rfl
#eval (List.range 10).map (· ^ 2)
CFLAGS += -O2 -g -Wall -Wextra -std=c11
all: $(TARGETS)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)
^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)@example\.com$
s/\([0-9]\{3\}\)-\([0-9]\{4\}\)/\2-\1/g
x := y ?? z; a ||= b; c &&= d; e **= 2; f >>>= 1; g !== h; i <=> j
std::vector<std::pair<int, std::string>> v{{1, "a"}, {2, "b"}}; auto [k, s] = v[0];
template <typename T, std::size_t N> constexpr std::size_t size(const T (&)[N]) noexcept { return N; }
while read -r line; do echo "${line//foo/bar}"; done < input.txt
if __name__ == "__main__":
    main()
try { JSON.parse(text) } catch (e) { throw new TypeError(`bad input: ${e.message}`) }
-- Haskell: primes = sieve [2..] where sieve (p:xs) = p : sieve [x | x <- xs, x `mod` p /= 0]
(define (fact n) (if (= n 0) 1 (* n (fact (- n 1)))))
%% MATLAB: A = [1 2; 3 4]; [V, D] = eig(A); disp(norm(A * V - V * D))
@media (max-width: 600px) { .proof { font-size: 0.9em; margin: 0 auto; } }
git commit -m "Fix off-by-one in BPE merge (closes #123)" && git push origin HEAD:refs/for/main
key1=value1&key2=value%20two&key3=%E6%95%B0%E5%AD%A6
    return self._cache.setdefault(key, compute(key))
        raise ValueError(f"expected {expected!r}, got {actual!r}")
            yield from (x for x in items if x is not None)
__init__ __name__ __dict__ _private __dunder__ snake_case camelCase PascalCase SCREAMING_CASE kebab-case
->  =>  <=  >=  ==  !=  ===  !==  &&  ||  <<  >>  >>>  ::  ..  ...  ?.  ??  **  //  ++  --
}}}}]]]]))))  {{{{[[[[((((  ;;;; ,,,, .... :::: """"  '' '' ````
base64: TWF0aGVtYXRpY3MgaXMgdGhlIHF1ZWVuIG9mIHRoZSBzY2llbmNlcy4gLS0gR2F1c3M=
sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'''
add(code)

# ---- special token strings inside text ---------------------------------------------------------------------------
specials = """<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>Prove that 1 + 1 = 2.<｜Assistant｜><think>
</think>The answer is 2.<｜end▁of▁sentence｜>
<｜User｜>What is 2+2?<｜Assistant｜></think>4<｜end▁of▁sentence｜>
text before <｜User｜> text after
<｜User｜><｜User｜><｜User｜>
<｜User｜｜> <｜User <｜User｜ ｜User｜> <|User|> <｜user｜>
<<｜Assistant｜>> [<｜end▁of▁sentence｜>] "<｜begin▁of▁sentence｜>"
<think>Let me think step by step.</think> The answer is 42.
<think>
</think>
a<think>b</think>c <think></think> <thinking> </thinking> <think >
<|EOT|> <|EOT|><|EOT|> <|eot|> <｜EOT｜>
<｜place▁holder▁no▁0｜> <｜place▁holder▁no▁42｜> <｜place▁holder▁no▁799｜> <｜place▁holder▁no▁800｜>
<｜fim▁begin｜>def f(x):<｜fim▁hole｜>    return x<｜fim▁end｜>
<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
```json
{"city": "Paris"}
```<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>
<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temp": 21}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>
<｜▁pad▁｜> padding <｜▁pad▁｜><｜▁pad▁｜>
The BOS token is written <｜begin▁of▁sentence｜> (with full-width bars ｜ and ▁ separators).
▁▁▁ ｜｜｜ ▁｜▁ <▁> <｜> ｜> <｜
Special tokens inside words: abc<｜User｜>def and 123<｜Assistant｜>456 and 😀<think>😀
## Solution<｜end▁of▁sentence｜>## Self Evaluation
	<｜User｜>	tab-separated	<｜Assistant｜>	"""
add(specials)

# ---- prose (English and other Latin-script languages) -----------------------------------------------------------
prose = """The quick brown fox jumps over the lazy dog.
It's a well-known fact that you can't divide by zero; don't try it, we'd all regret it.
"Quoted text," she said, 'and single quotes' — with an em dash – and an en dash - and a hyphen.
Mathematics is the queen of the sciences and number theory is the queen of mathematics. — C. F. Gauss
In 1637, Fermat wrote in the margin that he had a truly marvelous proof which the margin was too narrow to contain.
Dr. Smith et al. (2021) showed, e.g., that p < 0.05 isn't everything; cf. Fig. 3(b), pp. 12–15.
HELLO WORLD!!! What's up??? Nothing much... #hashtag @mention https://example.com/path?q=1&r=2#frag
e-mail: first.last+tag@sub.example.co.uk; URL: http://www.example.org/~user/index.html
Il était une fois une mathématicienne qui aimait les équations différentielles.
Der Satz des Pythagoras gilt in jedem rechtwinkligen Dreieck.
El teorema fundamental del álgebra afirma que todo polinomio no constante tiene una raíz compleja.
O teorema de Fermat foi demonstrado por Andrew Wiles em 1994.
Nel mezzo del cammin di nostra vita mi ritrovai per una selva oscura.
Dit is een Nederlandse zin met een paar woorden.
Ekzistas senfine multaj primoj — Esperanto ankaŭ havas ĉ, ĝ, ĥ, ĵ, ŝ, ŭ.
I'm, you're, he's, she'll, they've, we'd, I'd've, y'all, o'clock, rock'n'roll
ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS $%^&*
lowercase sentence without any punctuation at all just words
MiXeD CaSe WoRdS lIkE tHiS aNd iPhone eBay McDonald's O'Neil
The price is $1,299.99 (or €1.199,99 / £999 / ¥150,000 / ₹99,999 / ₿0.02).
Temperatures range from −40 °C to +50 °C (−40 °F to 122 °F).
Footnote¹ and footnote² and trademark™ and registered® and copyright © 2025.
Section § 3.2, paragraph ¶ 4, dagger † and double dagger ‡, bullet • item, per mille ‰.
«Guillemets» „German quotes“ “English quotes” ‘single’ ‚low‘ ‹single guillemets›
Ellipsis… and three dots... and four....; semicolon; colon: interrobang‽ inverted ¿¡
Hyphen-ated words, well-known, state-of-the-art, mother-in-law, 21st-century.
Q: What is the derivative of x²? A: 2x.
TL;DR: it works. FYI, ASAP, e.g., i.e., etc., vs., approx.
Underscores_in_words and__double__underscores and trailing_ and _leading"""
add(prose)

fixed = len(lines)

# ---- composed lines -----------------------------------------------------------------------------------------------
greek = ["\\alpha", "\\beta", "\\gamma", "\\delta", "\\epsilon", "\\theta", "\\lambda", "\\mu", "\\sigma",
         "\\omega", "\\phi", "\\psi", "\\xi", "\\eta", "\\rho", "\\tau", "\\kappa", "\\nu", "\\pi", "\\chi"]
ugreek = list("αβγδεζηθικλμνξπρστυφχψω")
vars_ = list("abcdefghijkmnpqrstuvwxyzABCDEFGHKLMNPQRSTXYZ")
sets = ["\\mathbb{N}", "\\mathbb{Z}", "\\mathbb{Q}", "\\mathbb{R}", "\\mathbb{C}", "ℕ", "ℤ", "ℚ", "ℝ", "ℂ",
        "\\mathbb{Z}/p\\mathbb{Z}", "\\mathbb{F}_q", "[0,1]", "(0,\\infty)"]
rels = ["=", "<", ">", "\\le", "\\ge", "\\neq", "\\equiv", "\\approx", "\\sim", "\\mid", "≤", "≥", "≠", "≡"]
ops = ["+", "-", "\\cdot", "\\times", "/", "−", "·", "×", "\\pm", "\\oplus"]
funcs = ["\\sin", "\\cos", "\\tan", "\\log", "\\ln", "\\exp", "\\sqrt", "f", "g", "h", "\\varphi", "\\Gamma"]
openers = ["Let", "Suppose", "Assume", "Consider", "Define", "Note that", "Observe that", "Recall that",
           "It follows that", "Hence", "Therefore", "Thus", "By induction,", "By symmetry,", "Clearly,",
           "We claim that", "Without loss of generality,", "In particular,", "Moreover,", "Finally,"]
closers = [".", ",", ";", ":", " as required.", " and we are done.", " (see Lemma 3).", ", which is absurd.",
           " for every $k$.", " holds trivially.", " \\qed", " $\\square$", ".\\\\", "."]
words = ("proof claim lemma theorem corollary integer prime divisor polynomial root sequence series limit "
         "function bound inequality equality triangle circle angle point line vector matrix group ring field "
         "graph vertex edge tree cycle path color set subset element order degree sum product term case "
         "contradiction induction parity modulo remainder quotient maximum minimum convex continuous").split()
cjk_words = ["证明", "定理", "引理", "整数", "素数", "函数", "不等式", "三角形", "多项式", "数列",
             "証明", "定理", "整数", "関数", "不等式", "三角形", "多項式", "数列", "よって", "したがって",
             "증명", "정리", "정수", "함수", "부등식", "삼각형", "다항식", "수열", "따라서", "그러므로"]
emojis = ["😀", "🙂", "🤔", "✅", "❌", "🚀", "📐", "🔢", "💯", "👍🏽", "👨‍💻", "🇫🇷", "❤️", "1️⃣", "🧮", "✨"]


def num():
    k = R.random()
    if k < 0.5:
        return str(R.randint(0, 99))
    if k < 0.8:
        return str(R.randint(100, 99999))
    if k < 0.9:
        return str(R.randint(10**6, 10**18))
    return "%d.%d" % (R.randint(0, 999), R.randint(0, 10**6))


def expr(depth=0):
    k = R.random()
    if depth > 2 or k < 0.3:
        return R.choice([R.choice(vars_), num(), R.choice(greek), R.choice(vars_) + "_" + R.choice(["i", "n", "{k+1}", "0", "{ij}"])])
    if k < 0.45:
        return "\\frac{%s}{%s}" % (expr(depth + 1), expr(depth + 1))
    if k < 0.55:
        return "%s^{%s}" % (R.choice(vars_), expr(depth + 1))
    if k < 0.65:
        return "%s(%s)" % (R.choice(funcs), expr(depth + 1))
    if k < 0.72:
        return "\\sum_{%s=1}^{%s} %s" % (R.choice("ijkn"), R.choice(["n", "N", "\\infty", num()]), expr(depth + 1))
    if k < 0.78:
        return "\\left(%s\\right)" % expr(depth + 1)
    if k < 0.82:
        return "\\sqrt{%s}" % expr(depth + 1)
    return "%s %s %s" % (expr(depth + 1), R.choice(ops), expr(depth + 1))


def math_sentence():
    a = R.choice(openers)
    v = R.choice(vars_)
    forms = [
        lambda: "%s $%s %s %s$%s" % (a, expr(), R.choice(rels), expr(), R.choice(closers)),
        lambda: "%s $%s \\in %s$ be such that $%s %s %s$%s" % (a, v, R.choice(sets), expr(), R.choice(rels), expr(), R.choice(closers)),
        lambda: "%s the %s $%s$ is %s%s" % (a, R.choice(words), expr(), R.choice(words), R.choice(closers)),
        lambda: "$$%s %s %s$$" % (expr(), R.choice(rels), expr()),
        lambda: "\\[ %s %s %s \\]" % (expr(), R.choice(rels), expr()),
        lambda: "%s %s %s %s %s $%s$." % (a, R.choice(words), R.choice(words), R.choice(words), R.choice(words), expr()),
        lambda: "\\item $%s$: %s" % (expr(), " ".join(R.choice(words) for _ in range(R.randint(2, 9)))),
        lambda: "%s & %s %s & %s \\\\" % (expr(), R.choice(rels), expr(), R.choice(["\\text{by (1)}", "\\text{AM-GM}", ""])),
    ]
    return R.choice(forms)()


def unicode_math_sentence():
    v = R.choice(ugreek + vars_)
    return R.choice([
        "∀%s ∈ %s: %s%s %s %s" % (v, R.choice(["ℕ", "ℤ", "ℝ", "ℂ", "ℚ⁺"]), v, R.choice(["²", "³", "ⁿ", "₁", ""]), R.choice(["≥", "≤", "≠", "≡", "≈"]), num()),
        "∑ᵢ₌₁ⁿ %s%s = %s" % (v, R.choice(["ᵢ", "ᵢ²", "ᵢ³"]), num()),
        "%s ∘ %s = id, %s⁻¹(%s) = %s" % (R.choice(funcs), R.choice(funcs), R.choice("fgh"), v, num()),
        "⌊%s/%s⌋ + ⌈%s/%s⌉ = %s" % (num(), num(), num(), num(), num()),
        "%s ⊆ %s ⟹ |%s| ≤ |%s|" % (v.upper(), R.choice("ABCST"), v.upper(), R.choice("ABCST")),
    ])


def cjk_sentence():
    return "".join(R.choice([R.choice(cjk_words), R.choice(cjk_words), "，", "。", " ", "、", num(), " $" + R.choice(vars_) + "$ ", R.choice(["のとき", "이다", "是", "的", "に", "을", "和"])])
                   for _ in range(R.randint(4, 14)))


def mixed_line():
    parts = []
    for _ in range(R.randint(3, 10)):
        k = R.random()
        if k < 0.25:
            parts.append(R.choice(words))
        elif k < 0.35:
            parts.append(R.choice(emojis))
        elif k < 0.5:
            parts.append(num())
        elif k < 0.6:
            parts.append(R.choice(cjk_words))
        elif k < 0.7:
            parts.append("$" + expr() + "$")
        elif k < 0.8:
            parts.append(R.choice(["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "<｜end▁of▁sentence｜>", "<|EOT|>"]))
        else:
            parts.append(R.choice(["(", ")", "[", "]", "{", "}", ",", ".", ";", ":", "!", "?", "—", "…", "\"", "'"]))
    seps = [" ", " ", " ", "", "  ", "\t", "   "]
    return "".join(p + R.choice(seps) for p in parts).rstrip(" ") if R.random() < 0.7 else "".join(p + R.choice(seps) for p in parts)


def code_line():
    ind = R.choice(["", "    ", "        ", "\t", "\t\t", "  "])
    name = R.choice(words) + R.choice(["", "_" + R.choice(words), str(R.randint(0, 9)), R.choice(words).capitalize()])
    return ind + R.choice([
        "%s = %s %s %s;" % (name, R.choice(vars_), R.choice(["+", "-", "*", "/", "%", "<<", "&", "|", "^"]), num()),
        "if (%s %s %s) { return %s; }" % (name, R.choice(["==", "!=", "<=", ">=", "<", ">"]), num(), R.choice(["0", "-1", "NULL", name])),
        "def %s(%s):" % (name, ", ".join(R.choice(vars_) for _ in range(R.randint(0, 3)))),
        "for (size_t i = 0; i < %s; i++) %s[i] = %s;" % (num(), name, num()),
        "\"%s\": [%s]," % (name, ", ".join(num() for _ in range(R.randint(1, 6)))),
        "// %s %s %s" % (R.choice(words), R.choice(words), R.choice(words)),
        "# %s: %s" % (R.choice(["TODO", "NOTE", "FIXME", "XXX"]), " ".join(R.choice(words) for _ in range(4))),
        "let %s: Vec<%s> = vec![%s];" % (name, R.choice(["u8", "i64", "f32", "String"]), ", ".join(num() for _ in range(3))),
        "assert %s(%s) == %s, \"%s\"" % (name, num(), num(), R.choice(words)),
    ])


def spaces_line():
    return "".join(R.choice([" " * R.randint(1, 12), "\t" * R.randint(1, 3), R.choice(words), num(), "\u3000", "\u00a0", R.choice(emojis)])
                   for _ in range(R.randint(2, 8)))


def combining_line():
    base = R.choice(["a", "e", "o", "u", "n", "x", "Z", "ア", "가", "字", "1", "ß", "ω"])
    marks = "".join(chr(R.choice([0x300, 0x301, 0x302, 0x303, 0x308, 0x30a, 0x327, 0x331, 0x20d7, 0x36f, 0x489]))
                    for _ in range(R.randint(1, 4)))
    return " ".join(base + marks + R.choice(words) for _ in range(R.randint(2, 6)))


def digit_line():
    d = "".join(R.choice("0123456789") for _ in range(R.randint(4, 120)))
    return R.choice([d, "x" + d, d + "y", "%s.%s" % (d[:len(d) // 2], d[len(d) // 2:]), " ".join(d[i:i + 3] for i in range(0, len(d), 3)),
                     ",".join(d[i:i + 4] for i in range(0, len(d), 4)), "$" + d + "$", "０１２" + d + "٣٤٥"])


gens = [(math_sentence, 1500), (unicode_math_sentence, 200), (cjk_sentence, 300), (mixed_line, 450),
        (code_line, 300), (spaces_line, 120), (combining_line, 100), (digit_line, 120)]
composed = []
for g, n in gens:
    composed.extend(g() for _ in range(n))
R.shuffle(composed)
# Blank lines every so often, so that the whole-file encoding sees runs of newlines.
for i, line in enumerate(composed):
    lines.append(line)
    if i % 97 == 0:
        lines.extend([""] * R.randint(1, 3))

# ---- long lines (pieces longer than any cache and deep BPE merges) -------------------------------------------------
lines.append("a" * 3000)
lines.append("ab" * 700 + "c")
lines.append(" " * 1000 + "x")
lines.append("\t" * 300)
lines.append("".join(R.choice("0123456789") for _ in range(2000)))
lines.append("supercalifragilisticexpialidocious" * 40)
lines.append("数学" * 600)
lines.append("😀" * 400)
lines.append("-" * 500 + "=" * 500 + "*" * 200)
lines.append("\\frac{1}{" * 100 + "x" + "}" * 100)
lines.append(" ".join(R.choice(words) for _ in range(1500)))

# ---- white space where JavaScript regexes differ from Oniguruma (documented in exceptions.txt) --------------
lines.append("Next line (U+0085) is white space for the reference: a \u0085b and  \u0085 x")
lines.append("A zero-width no-break space (U+FEFF) is not:  \ufeffword and x \ufeff y")

sys.stdout.write("\n".join(lines) + "\n")
