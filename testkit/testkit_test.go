package testkit

import (
	"context"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

func publish(t *testing.T, url, topic, payload string) {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("pub-" + topic))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer c.Disconnect(100)
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
}

// TestMosquittoRestartKeepsQueuedMessages: a persistent session's QoS 1
// message published while the collector is away survives a broker restart.
func TestMosquittoRestartKeepsQueuedMessages(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	m := StartMosquitto(t, MosquittoOptions{Persistence: true})
	c := NewCollector(t, CollectorOptions{URL: m.URL(), Filter: "a/#", ClientID: "keeper", QoS: 1})
	publish(t, m.URL(), "a/1", "one")
	if err := c.WaitLen(ctx, 1); err != nil {
		t.Fatal(err)
	}
	c.Close()
	publish(t, m.URL(), "a/2", "two") // queued for the absent persistent session
	m.Stop()
	m.Start()
	c2 := NewCollector(t, CollectorOptions{URL: m.URL(), Filter: "a/#", ClientID: "keeper", QoS: 1})
	// QoS 1 is at least once: "one" comes again when the first
	// collector's PUBACK had not left before its DISCONNECT (paho acks
	// after the handler returns), which is the broker keeping its word.
	for n := 1; ; n++ {
		if err := c2.WaitLen(ctx, n); err != nil {
			t.Fatalf("%v; got %+v", err, c2.Messages())
		}
		got := c2.Messages()[n-1]
		if got.Topic == "a/2" && got.Payload == "two" {
			return
		}
		if got.Topic != "a/1" || got.Payload != "one" || n > 1 {
			t.Fatalf("got %+v, want two (after at most a redelivered one)", c2.Messages())
		}
	}
}
