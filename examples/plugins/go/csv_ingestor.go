// csv_ingestor.go
// Turns CSV data into events: a POLKU ingestor plugin for source "csv".
//
// Send raw bytes to POLKU with source "csv": the first line is the header,
// and each data row becomes an event of type "csv.row" whose metadata maps
// the header names to the row's values. The plugin registers itself with the
// gateway, keeps the registration alive with heartbeats, and unregisters when
// it is stopped (SIGTERM or Ctrl-C).
//
// Environment:
//
//	PLUGIN_PORT            port to serve on, on 127.0.0.1 (default 9002)
//	PLUGIN_ADVERTISE_ADDR  address the gateway dials (default 127.0.0.1:PLUGIN_PORT)
//	POLKU_ADDR             the gateway's gRPC address (default localhost:50051);
//	                       "off" serves without registering
//	POLKU_PLUGIN_TOKEN     sent as `authorization: Bearer <token>` to the registry
//
// Run it with `go run csv_ingestor.go` (or `go run .`).
package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	polkuv1 "polku-examples/csv-ingestor/polkuv1"
)

// rpcTimeout bounds each call to the gateway's registry.
const rpcTimeout = 5 * time.Second

// CSVIngestor serves polku.v1.IngestorPlugin.
type CSVIngestor struct {
	polkuv1.UnimplementedIngestorPluginServer
}

func (p *CSVIngestor) Info(ctx context.Context, _ *emptypb.Empty) (*polkuv1.PluginInfo, error) {
	return &polkuv1.PluginInfo{
		Name:        "csv-ingestor",
		Version:     "0.1.0",
		Type:        polkuv1.PluginType_INGESTOR,
		Sources:     []string{"csv"}, // ← Handle source: "csv"
		Description: "Turns CSV rows into events (header names become metadata keys)",
	}, nil
}

func (p *CSVIngestor) Health(ctx context.Context, _ *emptypb.Empty) (*polkuv1.HealthResponse, error) {
	return &polkuv1.HealthResponse{Healthy: true}, nil
}

func (p *CSVIngestor) Ingest(ctx context.Context, req *polkuv1.IngestRequest) (*polkuv1.IngestResponse, error) {
	data := bytes.TrimPrefix(req.GetData(), []byte("\xef\xbb\xbf")) // a UTF-8 BOM is not part of the first header
	reader := csv.NewReader(bytes.NewReader(data))
	reader.FieldsPerRecord = -1 // rows of the wrong width are reported below, not fatal

	headers, err := reader.Read()
	if errors.Is(err, io.EOF) {
		return &polkuv1.IngestResponse{}, nil // no input, no events
	}
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "cannot read the CSV header: %v", err)
	}

	resp := &polkuv1.IngestResponse{}
	for index := uint32(0); ; index++ { // index 0 is the first data row
		row, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			var parseErr *csv.ParseError
			if !errors.As(err, &parseErr) {
				return nil, status.Errorf(codes.Internal, "reading CSV: %v", err)
			}
			resp.Errors = append(resp.Errors, &polkuv1.RecordError{Index: index, Message: parseErr.Error()})
			continue
		}
		if len(row) != len(headers) {
			resp.Errors = append(resp.Errors, &polkuv1.RecordError{
				Index:   index,
				Message: fmt.Sprintf("row has %d fields, the header has %d", len(row), len(headers)),
			})
			continue
		}

		// Each CSV row becomes an event
		metadata := make(map[string]string, len(headers))
		for i, h := range headers {
			metadata[h] = row[i]
		}

		resp.Events = append(resp.Events, &polkuv1.Event{
			Id:        uuid.New().String(),
			Source:    req.GetSource(),
			EventType: "csv.row",
			Metadata:  metadata,
		})
	}

	return resp, nil
}

// keepRegistered registers with the gateway, sends heartbeats, registers
// again when the gateway forgot the plugin (it restarted, or heartbeats were
// missed), and unregisters once ctx is done.
func keepRegistered(ctx context.Context, registry polkuv1.PluginRegistryClient, info *polkuv1.PluginInfo, address, token string) {
	withToken := func(c context.Context) context.Context {
		if token == "" {
			return c
		}
		return metadata.AppendToOutgoingContext(c, "authorization", "Bearer "+token)
	}
	call := func(f func(context.Context) error) error {
		c, cancel := context.WithTimeout(withToken(context.Background()), rpcTimeout)
		defer cancel()
		return f(c)
	}

	var pluginID string
	every, backoff := 200*time.Millisecond, 200*time.Millisecond
	reachable := true
	lastFailure := codes.OK // a failing Register is logged once per status code
	for ctx.Err() == nil {
		if pluginID == "" {
			var resp *polkuv1.RegisterResponse
			err := call(func(c context.Context) (err error) {
				resp, err = registry.Register(c, &polkuv1.RegisterRequest{Info: info, Address: address})
				return err
			})
			if err != nil {
				if status.Code(err) != lastFailure {
					log.Printf("register failed, retrying: %s: %s", status.Code(err), status.Convert(err).Message())
					lastFailure = status.Code(err)
				}
				every, backoff = backoff, min(backoff*2, 5*time.Second)
			} else {
				pluginID = resp.GetPluginId()
				every = time.Duration(max(resp.GetHeartbeatIntervalMs(), 50)) * time.Millisecond
				backoff, reachable, lastFailure = 200*time.Millisecond, true, codes.OK
				log.Printf("registered as %s (heartbeat every %s)", pluginID, every)
			}
		} else {
			err := call(func(c context.Context) error {
				_, err := registry.Heartbeat(c, &polkuv1.HeartbeatRequest{PluginId: pluginID})
				return err
			})
			switch {
			case err == nil:
				if !reachable {
					log.Printf("gateway reachable again")
					reachable = true
				}
			case status.Code(err) == codes.NotFound:
				log.Printf("the gateway forgot this plugin; registering again")
				pluginID = ""
				continue
			case reachable:
				log.Printf("heartbeat failed: %s: %s", status.Code(err), status.Convert(err).Message())
				reachable = false
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(every):
		}
	}

	if pluginID != "" {
		err := call(func(c context.Context) error {
			_, err := registry.Unregister(c, &polkuv1.UnregisterRequest{PluginId: pluginID})
			return err
		})
		if err != nil {
			log.Printf("unregister failed: %s: %s", status.Code(err), status.Convert(err).Message())
		} else {
			log.Printf("unregistered %s", pluginID)
		}
	}
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func main() {
	log.SetFlags(log.LstdFlags)
	log.SetPrefix("csv-ingestor ")

	listen := net.JoinHostPort("127.0.0.1", envOr("PLUGIN_PORT", "9002"))
	advertise := envOr("PLUGIN_ADVERTISE_ADDR", listen)
	gateway := strings.TrimPrefix(envOr("POLKU_ADDR", "localhost:50051"), "http://")
	token := os.Getenv("POLKU_PLUGIN_TOKEN")

	lis, err := net.Listen("tcp", listen)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", listen, err)
	}
	plugin := &CSVIngestor{}
	server := grpc.NewServer()
	polkuv1.RegisterIngestorPluginServer(server, plugin)
	served := make(chan error, 1)
	go func() { served <- server.Serve(lis) }()
	log.Printf("serving IngestorPlugin on %s", listen)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	unregistered := make(chan struct{})
	if strings.EqualFold(gateway, "off") {
		close(unregistered)
	} else {
		conn, err := grpc.NewClient(gateway, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			log.Fatalf("invalid POLKU_ADDR %q: %v", gateway, err)
		}
		defer conn.Close()
		info, _ := plugin.Info(ctx, &emptypb.Empty{})
		go func() {
			keepRegistered(ctx, polkuv1.NewPluginRegistryClient(conn), info, advertise, token)
			close(unregistered)
		}()
	}

	select {
	case <-ctx.Done():
		log.Printf("stopping")
	case err := <-served:
		log.Fatalf("server stopped: %v", err)
	}
	stop()
	<-unregistered

	// Finish the calls in flight, but not forever.
	done := make(chan struct{})
	go func() { server.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		server.Stop()
	}
}
