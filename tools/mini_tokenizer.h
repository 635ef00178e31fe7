/* A small byte-level BPE tokenizer.json for offline synthetic checkpoints. */
#ifndef DSM_MINI_TOKENIZER_H
#define DSM_MINI_TOKENIZER_H

/* Writes dir/tokenizer.json and dir/tokenizer_config.json; all ids < vocab_size (>= 512). */
int mini_tokenizer_write(const char *dir, int vocab_size);
/* Removes what mini_tokenizer_write wrote, then dir itself if it is empty (tests use temporary folders). */
void mini_tokenizer_remove(const char *dir);

#endif
