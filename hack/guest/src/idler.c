/* idler: a dynamically linked process that maps libvictim and libc and then
 * sleeps, so the "crowd" role can fill a guest with a few hundred realistic
 * processes (each with a dozen or more memory areas) for introspection
 * benchmarks. */
#include <stdint.h>
#include <unistd.h>

uint64_t victim_modexp(uint64_t base, uint64_t exp, uint64_t mod);

int main(void)
{
	/* Touch the library once so its pages are mapped and resolved. */
	volatile uint64_t r = victim_modexp(3, 5, 7);
	(void)r;
	for (;;)
		pause();
}
