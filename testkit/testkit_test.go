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
	if err := c2.WaitLen(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := c2.Messages()[0]; got.Topic != "a/2" || got.Payload != "two" {
		t.Fatalf("got %+v", got)
	}
}
