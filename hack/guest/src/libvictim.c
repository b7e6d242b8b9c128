/* libvictim: a stand-in for a crypto library. victim_modexp is a textbook
 * left-to-right square-and-multiply modular exponentiation whose memory
 * accesses depend on the exponent's bits: the kind of code Prime+Probe and
 * Flush+Reload attacks target. Tests resolve sampled addresses to it. */
#include <stdint.h>

static uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m)
{
	return (uint64_t)(((unsigned __int128)a * b) % m);
}

/* A table indexed by secret bits, so cache lines touched depend on the key. */
static volatile uint64_t table[64 * 8];

uint64_t victim_modexp(uint64_t base, uint64_t exp, uint64_t mod)
{
	uint64_t r = 1;
	for (int i = 63; i >= 0; i--) {
		r = mulmod(r, r, mod);
		if ((exp >> i) & 1) {
			r = mulmod(r, base, mod);
			table[(i * 8) % (64 * 8)] += r;
		}
	}
	return r;
}
