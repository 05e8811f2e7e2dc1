// Benchmark target (Go): each stdin line "K" makes K calls of work() and
// prints the mean nanoseconds per call.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"
)

//go:noinline
func work(a, b, c, d int) int { return a + b*c - d }

func main() {
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		k, _ := strconv.Atoi(in.Text())
		sink := 0
		start := time.Now()
		for i := 0; i < k; i++ {
			sink += work(i, 2, 3, 4)
		}
		fmt.Printf("%.1f %d\n", float64(time.Since(start).Nanoseconds())/float64(max1(k)), sink&1)
	}
}

func max1(k int) int {
	if k < 1 {
		return 1
	}
	return k
}
