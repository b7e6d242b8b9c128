/* spy: walks a buffer larger than the last-level cache line by line, as a
 * Prime+Probe attacker does, so its vCPU is busy with cache misses. */
#include <stdint.h>
#include <stdlib.h>

#define SIZE (8u << 20)

int main(void)
{
	volatile uint8_t *buf = malloc(SIZE);
	uint64_t sum = 0;
	if (!buf)
		return 1;
	for (;;)
		for (uint32_t i = 0; i < SIZE; i += 64)
			sum += buf[i]++;
	return (int)sum;
}
