// Package board binds the firmware to the Raspberry Pi Pico's hardware with
// TinyGo's machine package: ESP8266 on UART0 (GP0/GP1, 115200 baud),
// MPU6050 on I2C1 (SDA GP14, SCL GP15), DS18B20 on GP16, pulse sensor on
// ADC0 (GP26), the RP2040's temperature diode, the mode switch (GP3
// configuration, GP4 working) and the LED on GP2. It builds only with TinyGo.
package board
