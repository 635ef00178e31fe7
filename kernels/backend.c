#include "build_config.h"

#include "backend.h"

#include "cpu_backend.h"
#include "emu/emu_backend.h"
#ifdef DSM_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif
#include "error.h"
#include "expert_kernels.h"

#include <string.h>

int dsm_backend_create(struct dsm_backend **out, const char *name, const struct dsm_backend_options *o)
{
	*out = NULL;
	if (!name || strcmp(name, "cpu") == 0)
		return dsm_cpu_backend_create(out, o);
	if (strcmp(name, "emu") == 0)
		return dsm_emu_backend_create(out, o);
#ifdef DSM_HAVE_CUDA
	if (strcmp(name, "cuda") == 0)
		return dsm_cuda_backend_create(out, o);
	return dsm_fail(DSM_EARG, "unknown backend '%s' (available: cpu, emu, cuda)", name);
#else
	if (strcmp(name, "cuda") == 0)
		return dsm_fail(DSM_EUNSUPPORTED, "backend 'cuda': this build has no cuda backend (configure found no nvcc; "
				"install the CUDA toolkit and configure --with-cuda)");
	return dsm_fail(DSM_EARG, "unknown backend '%s' (available: cpu, emu)", name);
#endif
}

void dsm_backend_destroy(struct dsm_backend *be)
{
	if (be)
		be->destroy(be);
}

const char *dsm_precision_name(enum dsm_precision p)
{
	return p == DSM_PRECISION_BF16 ? "bf16" : "f32";
}

enum dsm_precision dsm_precision_default(void)
{
	return dsm_isa_available(DSM_ISA_AVX512BF16) ? DSM_PRECISION_BF16 : DSM_PRECISION_F32;
}

int dsm_precision_parse(const char *s, enum dsm_precision *p)
{
	if (strcmp(s, "f32") == 0)
		*p = DSM_PRECISION_F32;
	else if (strcmp(s, "bf16") == 0)
		*p = DSM_PRECISION_BF16;
	else
		return dsm_fail(DSM_EARG, "precision '%s': expected f32 or bf16", s);
	return 0;
}
