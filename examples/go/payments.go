// A Go "payments" service for Coral's tests: each stdin line N starts N goroutines
// that call validate(), which recurses DEPTH deep with a 512-byte frame so
// that goroutine stacks grow (and move) while a probe is attached.
// Build: go build -o payments payments.go
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"sync"
)

//go:noinline
func validate(card int64, amount int, deep int) (int, error) {
	var pad [64]int64 // stack use: makes goroutine stacks grow during recursion
	pad[deep%64] = card
	if deep > 0 {
		r, err := validate(card, amount, deep-1)
		return r + int(pad[deep%64]&1), err
	}
	if amount > 1000 {
		return -1, fmt.Errorf("declined")
	}
	return amount, nil
}

func main() {
	depth := 0
	if len(os.Args) > 1 {
		depth, _ = strconv.Atoi(os.Args[1])
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, _ := strconv.Atoi(in.Text())
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) { defer wg.Done(); validate(int64(i), i%2000, depth) }(i)
		}
		wg.Wait()
		fmt.Println("done", n)
	}
}
