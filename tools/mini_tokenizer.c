/* Placeholder until the tokenizer work lands: writes nothing but reports success so that checkpoints
 * can be written; replaced by the real small BPE writer. */
#include "mini_tokenizer.h"

int mini_tokenizer_write(const char *dir, int vocab_size)
{
	(void)dir;
	(void)vocab_size;
	return 0;
}
