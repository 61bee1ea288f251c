// Command fast-start is a pod entrypoint for bench/guide: a compiled program
// that asks for AWS credentials at its first instant, as a Go service does
// when it starts.
//
// At start, side by side:
//   - "sdk": the AWS SDK for Go v2's default credential chain and
//     sts:GetCallerIdentity, unchanged (its IMDS client gives each request
//     0.5 s and makes three attempts);
//   - "strict": the single attempt botocore, the AWS CLI and the JavaScript
//     and Java SDKs make (IMDSv2 token, role listing, the role's document;
//     1 s timeout, no retry, a 404 is final), made as early as a compiled
//     program makes it;
//   - "served": for the bench's clock only, the role listing asked again and
//     again until the node's proxy answers it: the moment the proxy held the
//     pod's entry (a request the proxy holds returns as soon as it arrives).
//
// One JSON line per result on stdout, times in Unix seconds; then it sleeps
// until SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

const imds = "http://169.254.169.254"

var out sync.Mutex

func emit(fields map[string]any) {
	fields["t"] = float64(time.Now().UnixNano()) / 1e9
	line, _ := json.Marshal(fields)
	out.Lock()
	defer out.Unlock()
	fmt.Println(string(line))
}

func sdk(ctx context.Context) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err == nil {
		var identity *sts.GetCallerIdentityOutput
		identity, err = sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err == nil {
			emit(map[string]any{"event": "sdk", "ok": true, "arn": *identity.Arn})
			return
		}
	}
	emit(map[string]any{"event": "sdk", "ok": false, "error": err.Error()})
}

// call is one IMDS request: the body of a 200, else an error naming the status.
func call(client *http.Client, method, path string, header http.Header) (string, int, error) {
	request, err := http.NewRequest(method, imds+path, nil)
	if err != nil {
		return "", 0, err
	}
	request.Header = header
	response, err := client.Do(request)
	if err != nil {
		return "", 0, err
	}
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	if response.StatusCode != http.StatusOK {
		return "", response.StatusCode, fmt.Errorf("%s %s: HTTP %d", method, path, response.StatusCode)
	}
	return string(body), response.StatusCode, err
}

func strict() {
	client := &http.Client{Timeout: time.Second}
	header := http.Header{"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": {"21600"}}
	token, status, err := call(client, http.MethodPut, "/latest/api/token", header)
	if err == nil {
		header = http.Header{"X-Aws-Ec2-Metadata-Token": {token}}
		var role, document string
		role, status, err = call(client, http.MethodGet, "/latest/meta-data/iam/security-credentials/", header)
		if err == nil {
			role = strings.TrimSpace(role)
			document, status, err = call(client, http.MethodGet, "/latest/meta-data/iam/security-credentials/"+role, header)
			var parsed struct{ AccessKeyId string }
			if err == nil && json.Unmarshal([]byte(document), &parsed) == nil && parsed.AccessKeyId != "" {
				emit(map[string]any{"event": "strict", "ok": true, "role": role})
				return
			}
			if err == nil {
				err = errors.New("no AccessKeyId in the role's document")
			}
		}
	}
	emit(map[string]any{"event": "strict", "ok": false, "status": status, "error": err.Error()})
}

func served() {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		role, _, err := call(client, http.MethodGet, "/latest/meta-data/iam/security-credentials/", nil)
		if err == nil {
			emit(map[string]any{"event": "served", "role": strings.TrimSpace(role)})
			return
		}
		time.Sleep(10 * time.Millisecond) // a 404 comes after the proxy's own wait; anything else must not spin
	}
}

func main() {
	emit(map[string]any{"event": "start", "pid": os.Getpid()})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	var started sync.WaitGroup
	for _, run := range []func(){func() { sdk(ctx) }, strict, served} {
		started.Add(1)
		go func() { defer started.Done(); run() }()
	}
	started.Wait()
	<-ctx.Done()
}
